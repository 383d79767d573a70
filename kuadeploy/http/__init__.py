"""The HTTP API (DESIGN §4): thin handlers that parse, call one service method, render."""
