"""Transparency for the ledger: an RFC 6962/9162 Merkle tree over the events, and
C2SP signed checkpoints of its root.

`merkle` is the pure hashing and proof core over a store of perfect-subtree
nodes; `note` signs and verifies C2SP signed notes and tlog checkpoints.
"""
