"""The deploy pipeline: fetch → migration gate → build → migrate → recreate → verify → roll back."""
