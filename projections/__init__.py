"""Pure folds over ledger events: (state, event) -> state.

No I/O, no clock, no randomness: the same events always give the same state, so
a rebuild from event 1 must equal the live state. A fold owns the state it is
given and may update it in place (a copy per event would make rebuilding a
million events quadratic); callers that need an old state keep an encoded copy.
"""
