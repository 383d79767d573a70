"""Export sinks: mirrors of the registry outside the ledger, for people and old clients.

A sink only ever receives what the ledger committed; nothing is read back from it
as a source, and a failing sink never blocks or fails a mutation.
"""
