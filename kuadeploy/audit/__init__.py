"""Transparency for the ledger: an RFC 6962/9162 Merkle tree over the events, and
C2SP signed checkpoints of its root.

Pure core: `merkle` (hashing, proofs, the compact range) and `note` (signed notes,
tlog checkpoints, Ed25519 keys). Around it: `checkpointer` signs the growing tree
(the tree itself is a cache in kuadeploy/ledger/tree.py), `keys` makes and reads
the signing key, `startup` opens a ledger only if it still holds what was signed,
`checkpoints` gives the audit routes their bodies, `offline` and `witness` are the
CLI's verifiers.
"""
