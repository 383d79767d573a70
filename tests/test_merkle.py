"""RFC 6962 / 9162 Merkle tree: known answers, every small proof against the RFC's
recursive definitions, random proofs in a 100,000-leaf tree, wrong proofs, storage."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Sequence

import pytest

from kuadeploy.audit.merkle import (
    EMPTY_ROOT,
    MemoryNodeStore,
    Node,
    NodeId,
    ProofError,
    SqliteNodeStore,
    Subtree,
    TreeState,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_at,
    root_from_inclusion_proof,
    subtree_node_ids,
    tree_state_at,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

# --- known answers -----------------------------------------------------------------------
# From transparency-dev/merkle: testonly/constants.go (LeafInputs, NodeHashes,
# RootHashes, CompactTrees), proof/verify_test.go (inclusionProofs with 1-based leaf
# numbers, here made 0-based; consistencyProofs) and testonly/reference_test.go
# (TestRefInclusionProof, TestRefConsistencyProof). RFC 6962 hashing, SHA-256.

LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]

# NODE_HASHES[level][index]: every perfect subtree of the 8-leaf tree.
NODE_HASHES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [
        h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
    ],
]

# ROOTS[size] for the trees of the first `size` LEAF_INPUTS.
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

N = NODE_HASHES
# COMPACT_TREES[size]: the compact range (peaks) of each size.
COMPACT_TREES = [
    [],
    [N[0][0]],
    [N[1][0]],
    [N[1][0], N[0][2]],
    [N[2][0]],
    [N[2][0], N[0][4]],
    [N[2][0], N[1][2]],
    [N[2][0], N[1][2], N[0][6]],
    [N[3][0]],
]

# (leaf index, tree size, proof)
INCLUSION_PROOFS = [
    (0, 1, []),
    (0, 2, [N[0][1]]),
    (1, 2, [N[0][0]]),
    (2, 3, [N[1][0]]),
    (1, 5, [N[0][0], N[1][1], N[0][4]]),
    (0, 8, [N[0][1], N[1][1], N[2][1]]),
    (5, 8, [N[0][4], N[1][3], N[2][0]]),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]

# (old size, new size, proof)
CONSISTENCY_PROOFS = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


# --- the RFC 9162 §2.1 definitions, recursively and literally, as the reference ---------


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]), RFC 9162 §2.1.1, over leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = _k(len(leaves))
    return node_hash(ref_root(leaves[:k]), ref_root(leaves[k:]))


def ref_path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]), RFC 9162 §2.1.3.1."""
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_root(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_root(leaves[:k])]


def ref_subproof(m: int, leaves: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b), RFC 9162 §2.1.4.1."""
    n = len(leaves)
    if m == n:
        return [] if b else [ref_root(leaves)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_root(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_root(leaves[:k])]


def ref_consistency(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true), for 0 < m < n."""
    if m in (0, len(leaves)):
        return []
    return ref_subproof(m, leaves, True)


def grown(leaf_hashes: Sequence[bytes]) -> tuple[TreeState, MemoryNodeStore]:
    state, nodes = TreeState().append(leaf_hashes)
    return state, MemoryNodeStore(nodes)


# --- hashing and roots -------------------------------------------------------------------


def test_leaf_and_node_hashes_match_the_published_vectors() -> None:
    assert [leaf_hash(d) for d in LEAF_INPUTS] == NODE_HASHES[0]
    for level in range(1, 4):
        below = NODE_HASHES[level - 1]
        pairs = [node_hash(below[i], below[i + 1]) for i in range(0, len(below), 2)]
        assert pairs == NODE_HASHES[level]
    assert ROOTS[0] == EMPTY_ROOT


def test_rfc_6962_domain_separation() -> None:
    # A leaf whose body is `left || right` must not hash like the node over them.
    left, right = NODE_HASHES[0][0], NODE_HASHES[0][1]
    assert leaf_hash(left + right) != node_hash(left, right)
    assert leaf_hash(b"") == bytes.fromhex(
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )


def test_compact_range_root_and_peaks_at_every_size_of_the_vectors() -> None:
    state = TreeState()
    assert state.root() == ROOTS[0]
    for size, data in enumerate(LEAF_INPUTS, start=1):
        state, _ = state.append([leaf_hash(data)])
        assert state.size == size
        assert state.root() == ROOTS[size]
        assert list(state.peaks) == COMPACT_TREES[size]


def test_append_reports_every_perfect_subtree_once() -> None:
    _, nodes = TreeState().append([leaf_hash(d) for d in LEAF_INPUTS])
    expected = {
        Node(level, index, hash_)
        for level, row in enumerate(NODE_HASHES)
        for index, hash_ in enumerate(row)
    }
    assert len(nodes) == len(expected)
    assert set(nodes) == expected


def test_batch_append_equals_leaf_by_leaf() -> None:
    leaves = [leaf_hash(b"event %d" % i) for i in range(300)]
    one_by_one, nodes_one = TreeState(), []
    for leaf in leaves:
        one_by_one, new = one_by_one.append([leaf])
        nodes_one += new
    batched, nodes_batched, i = TreeState(), [], 0
    for batch_size in [1, 2, 5, 64, 100, 3, 125]:
        batched, new = batched.append(leaves[i : i + batch_size])
        nodes_batched += new
        i += batch_size
    assert i == len(leaves)
    assert batched == one_by_one
    assert nodes_batched == nodes_one
    assert batched.root() == ref_root(leaves)


def test_tree_state_rejects_inconsistent_peaks() -> None:
    with pytest.raises(ValueError):
        TreeState(3, (SOME_HASH,))
    with pytest.raises(ValueError):
        TreeState(1, (b"short",))
    with pytest.raises(ValueError):
        TreeState().append([b"not a hash"])


def test_subtree_node_ids_refuses_ranges_that_are_no_rfc_6962_subtree() -> None:
    assert subtree_node_ids(Subtree(0, 7)) == [NodeId(2, 0), NodeId(1, 2), NodeId(0, 6)]
    assert subtree_node_ids(Subtree(8, 13)) == [NodeId(2, 2), NodeId(0, 12)]
    with pytest.raises(ValueError):
        subtree_node_ids(Subtree(1, 3))


# --- known-answer proofs -----------------------------------------------------------------


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_inclusion_proofs_match_the_published_vectors(
    index: int, size: int, proof: list[bytes]
) -> None:
    _, store = grown([leaf_hash(d) for d in LEAF_INPUTS[:size]])
    assert inclusion_proof(store, index, size) == proof
    verify_inclusion(index, size, leaf_hash(LEAF_INPUTS[index]), proof, ROOTS[size])


@pytest.mark.parametrize(("old_size", "new_size", "proof"), CONSISTENCY_PROOFS)
def test_consistency_proofs_match_the_published_vectors(
    old_size: int, new_size: int, proof: list[bytes]
) -> None:
    _, store = grown([leaf_hash(d) for d in LEAF_INPUTS[:new_size]])
    assert consistency_proof(store, old_size, new_size) == proof
    verify_consistency(old_size, new_size, proof, ROOTS[old_size], ROOTS[new_size])


def test_single_leaf_tree() -> None:
    # transparency-dev/merkle proof/verify_test.go TestVerifyInclusionSingleEntry.
    leaf = leaf_hash(b"data")
    verify_inclusion(0, 1, leaf, [], leaf)
    for root, leaf_ in [(leaf, b""), (b"", leaf), (b"", b"")]:
        with pytest.raises(ProofError):
            verify_inclusion(0, 1, leaf_, [], root)
    for index, size in [(0, 0), (1, 0), (2, 1)]:
        with pytest.raises(ProofError):
            verify_inclusion(index, size, SOME_HASH, [], EMPTY_ROOT)


def test_proof_shape_is_checked_before_any_root() -> None:
    # A proof of the wrong length or with hashes of the wrong size is malformed in
    # itself, whatever root it is later compared with.
    leaf = leaf_hash(LEAF_INPUTS[5])
    proof = [N[0][4], N[1][3], N[2][0]]
    assert root_from_inclusion_proof(5, 8, leaf, proof) == ROOTS[8]
    with pytest.raises(ProofError, match="too long"):
        root_from_inclusion_proof(5, 8, leaf, [*proof, ROOTS[8]])
    with pytest.raises(ProofError, match="too short"):
        root_from_inclusion_proof(5, 8, leaf, proof[:-1])
    with pytest.raises(ProofError, match="32 bytes"):
        root_from_inclusion_proof(5, 8, leaf, [N[0][4], N[1][3] + b"\0", N[2][0]])
    with pytest.raises(ProofError, match="32 bytes"):
        root_from_inclusion_proof(5, 8, leaf[:31], proof)
    old, new, consistency = (
        CONSISTENCY_PROOFS[2][0],
        CONSISTENCY_PROOFS[2][1],
        CONSISTENCY_PROOFS[2][2],
    )
    with pytest.raises(ProofError, match="too long"):
        verify_consistency(old, new, [*consistency, ROOTS[new]], ROOTS[old], ROOTS[new])
    with pytest.raises(ProofError, match="too short"):
        verify_consistency(old, new, consistency[:-1], ROOTS[old], ROOTS[new])
    with pytest.raises(ProofError, match="32 bytes"):
        verify_consistency(
            old, new, [consistency[0][:31], *consistency[1:]], ROOTS[old], ROOTS[new]
        )


def test_trivial_consistency() -> None:
    # Adapted from transparency-dev/merkle TestVerifyConsistency, with the stricter
    # rule that the tree of size 0 has the empty root.
    root = ROOTS[3]
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 3, [], EMPTY_ROOT, root)
    verify_consistency(3, 3, [], root, root)
    bad = [
        (0, 3, [], root, root),  # size 0 with a non-empty root
        (3, 3, [], root, ROOTS[4]),  # same size, different roots
        (1, 0, [], root, root),  # back in time
        (4, 3, [], root, root),
        (1, 2, [], ROOTS[1], ROOTS[2]),  # empty proof
        (0, 0, [EMPTY_ROOT], EMPTY_ROOT, EMPTY_ROOT),  # must be empty
        (0, 1, [EMPTY_ROOT], EMPTY_ROOT, ROOTS[1]),
        (1, 1, [EMPTY_ROOT], ROOTS[1], ROOTS[1]),
    ]
    for old_size, new_size, proof, old_root, new_root in bad:
        with pytest.raises(ProofError):
            verify_consistency(old_size, new_size, proof, old_root, new_root)


# --- every proof of every tree up to 64 leaves -------------------------------------------

SMALL = 64
SMALL_LEAVES = [leaf_hash(b"event %d" % i) for i in range(SMALL)]


def _rejects(verify: Callable[..., None], *claim: object) -> bool:
    try:
        verify(*claim)
    except ProofError:
        return True
    return False


def _flipped(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    wrong = list(proof)
    wrong[i] = bytes([wrong[i][0] ^ bit]) + wrong[i][1:]
    return wrong


def wrong_inclusion_claims(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> list[tuple[str, tuple]]:
    """transparency-dev/merkle's corruptInclusionProof probes, and a few more."""
    probes = [
        ("index - 1", (index - 1, size, leaf, proof, root)),
        ("index + 1", (index + 1, size, leaf, proof, root)),
        ("index ^ 2", (index ^ 2, size, leaf, proof, root)),
        ("size * 2", (index, size * 2, leaf, proof, root)),
        ("size // 2", (index, size // 2, leaf, proof, root)),
        ("wrong leaf", (index, size, leaf_hash(b"WrongLeaf"), proof, root)),
        ("empty root", (index, size, leaf, proof, EMPTY_ROOT)),
        ("random root", (index, size, leaf, proof, SOME_HASH)),
        ("trailing garbage", (index, size, leaf, [*proof, b""], root)),
        ("trailing root", (index, size, leaf, [*proof, root], root)),
        ("preceding garbage", (index, size, leaf, [b"", *proof], root)),
        ("preceding root", (index, size, leaf, [root, *proof], root)),
    ]
    for i in range(len(proof)):
        probes.append((f"proof[{i}] bit 3", (index, size, leaf, _flipped(proof, i, 8), root)))
    if proof:
        probes.append(("removed last", (index, size, leaf, proof[:-1], root)))
        probes.append(("removed first", (index, size, leaf, proof[1:], root)))
    if len(proof) > 1:
        inserted = [proof[0], SOME_HASH, *proof[1:]]
        probes.append(("inserted component", (index, size, leaf, inserted, root)))
    return probes


def wrong_consistency_claims(
    old_size: int, new_size: int, proof: list[bytes], old_root: bytes, new_root: bytes
) -> list[tuple[str, tuple]]:
    """transparency-dev/merkle's corruptConsistencyProof probes, and a few more."""
    m, n, p = old_size, new_size, proof
    probes = [
        ("old size - 1", (m - 1, n, p, old_root, new_root)),
        ("old size + 1", (m + 1, n, p, old_root, new_root)),
        ("old size ^ 2", (m ^ 2, n, p, old_root, new_root)),
        ("new size * 2", (m, n * 2, p, old_root, new_root)),
        ("new size // 2", (m, n // 2, p, old_root, new_root)),
        ("wrong old root", (m, n, p, SOME_HASH, new_root)),
        ("wrong new root", (m, n, p, old_root, SOME_HASH)),
        ("swapped roots", (m, n, p, new_root, old_root)),
        ("empty proof", (m, n, [], old_root, new_root)),
        ("trailing garbage", (m, n, [*p, b""], old_root, new_root)),
        ("trailing old root", (m, n, [*p, old_root], old_root, new_root)),
        ("trailing new root", (m, n, [*p, new_root], old_root, new_root)),
        ("preceding garbage", (m, n, [b"", *p], old_root, new_root)),
        ("preceding old root", (m, n, [old_root, *p], old_root, new_root)),
        ("preceding new root", (m, n, [new_root, *p], old_root, new_root)),
        ("preceding proof[0]", (m, n, [p[0], *p], old_root, new_root)),
        ("truncated", (m, n, p[:-1], old_root, new_root)),
        ("removed first", (m, n, p[1:], old_root, new_root)),
    ]
    for i in range(len(p)):
        probes.append((f"proof[{i}] bit 4", (m, n, _flipped(p, i, 16), old_root, new_root)))
    return probes


def test_every_inclusion_proof_up_to_64_leaves() -> None:
    state, store = grown(SMALL_LEAVES)
    assert state.root() == ref_root(SMALL_LEAVES)
    for size in range(1, SMALL + 1):
        leaves = SMALL_LEAVES[:size]
        root = ref_root(leaves)
        for index in range(size):
            proof = inclusion_proof(store, index, size)
            assert proof == ref_path(index, leaves), (index, size)
            verify_inclusion(index, size, leaves[index], proof, root)
            for name, claim in wrong_inclusion_claims(index, size, leaves[index], proof, root):
                assert _rejects(verify_inclusion, *claim), (index, size, name)


def test_every_consistency_proof_up_to_64_leaves() -> None:
    _, store = grown(SMALL_LEAVES)
    roots = [ref_root(SMALL_LEAVES[:size]) for size in range(SMALL + 1)]
    for new_size in range(SMALL + 1):
        for old_size in range(new_size + 1):
            proof = consistency_proof(store, old_size, new_size)
            assert proof == ref_consistency(old_size, SMALL_LEAVES[:new_size])
            verify_consistency(old_size, new_size, proof, roots[old_size], roots[new_size])
            if not proof:
                continue
            claims = wrong_consistency_claims(
                old_size, new_size, proof, roots[old_size], roots[new_size]
            )
            for name, claim in claims:
                assert _rejects(verify_consistency, *claim), (
                    old_size,
                    new_size,
                    name,
                )


def test_root_and_compact_range_of_every_earlier_size_from_stored_nodes() -> None:
    state, store = TreeState(), MemoryNodeStore()
    states = [state]
    for leaf in SMALL_LEAVES:
        state, nodes = state.append([leaf])
        store.put_nodes(nodes)
        states.append(state)
    for size in range(SMALL + 1):
        assert tree_state_at(store, size) == states[size]
        assert root_at(store, size) == ref_root(SMALL_LEAVES[:size])


def test_requests_outside_the_tree_are_refused() -> None:
    _, store = grown(SMALL_LEAVES[:5])
    with pytest.raises(ValueError):
        inclusion_proof(store, 5, 5)
    with pytest.raises(ValueError):
        inclusion_proof(store, -1, 5)
    with pytest.raises(ValueError):
        consistency_proof(store, 4, 3)
    with pytest.raises(KeyError):  # a size the store has not reached yet
        inclusion_proof(store, 0, 6)
    with pytest.raises(KeyError):
        root_at(store, 6)


# --- a 100,000-leaf tree: random pairs --------------------------------------------------

BIG = 100_000


@pytest.fixture(scope="module")
def big_tree() -> tuple[list[bytes], MemoryNodeStore, dict[int, bytes]]:
    """100,000 leaves appended in random batches; the root recorded at each batch end."""
    rng = random.Random(6962)
    leaves = [leaf_hash(rng.randbytes(rng.randrange(1, 64))) for _ in range(BIG)]
    state, store = TreeState(), MemoryNodeStore()
    roots = {0: EMPTY_ROOT}
    while state.size < BIG:
        batch = leaves[state.size : state.size + rng.choice([1, 7, 64, 500, 1500])]
        state, nodes = state.append(batch)
        store.put_nodes(nodes)
        roots[state.size] = state.root()
    return leaves, store, roots


def test_random_proofs_in_a_100000_leaf_tree(big_tree) -> None:
    leaves, store, roots = big_tree
    rng = random.Random(9162)
    sizes = sorted(roots)
    assert sizes[-1] == BIG
    for _ in range(300):
        size = rng.choice(sizes[1:])
        index = rng.randrange(size)
        proof = inclusion_proof(store, index, size)
        verify_inclusion(index, size, leaves[index], proof, roots[size])
        assert _rejects(verify_inclusion, index, size, leaves[index], proof, SOME_HASH)
        if proof:
            wrong = _flipped(proof, rng.randrange(len(proof)), 1)
            assert _rejects(verify_inclusion, index, size, leaves[index], wrong, roots[size])

        old_size, new_size = sorted(rng.sample(sizes, 2))
        old_root, new_root = roots[old_size], roots[new_size]
        proof = consistency_proof(store, old_size, new_size)
        verify_consistency(old_size, new_size, proof, old_root, new_root)
        if proof:
            wrong = _flipped(proof, rng.randrange(len(proof)), 1)
            assert _rejects(verify_consistency, old_size, new_size, wrong, old_root, new_root)
            assert _rejects(verify_consistency, old_size, new_size, proof[:-1], old_root, new_root)


def test_root_of_earlier_sizes_in_a_100000_leaf_tree(big_tree) -> None:
    _, store, roots = big_tree
    for size in random.Random(1).sample(sorted(roots), 200):
        assert root_at(store, size) == roots[size]


def test_a_rewritten_tail_is_not_consistent(big_tree) -> None:
    leaves, _, roots = big_tree
    old_size = 65_537
    # The same first 65,537 leaves, a rewritten 60,000th: an honest-looking new tree.
    forged = list(leaves)
    forged[59_999] = leaf_hash(b"rewritten")
    forged_state, forged_store = grown(forged)
    proof = consistency_proof(forged_store, old_size, BIG)
    honest_old_root = TreeState().append(leaves[:old_size])[0].root()
    with pytest.raises(ProofError):
        verify_consistency(old_size, BIG, proof, honest_old_root, forged_state.root())
    assert forged_state.root() != roots[BIG]


# --- SQLite node store -------------------------------------------------------------------


def test_sqlite_node_store_round_trip(tmp_path) -> None:
    leaves = [leaf_hash(b"event %d" % i) for i in range(1000)]
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path, isolation_level=None)
    store = SqliteNodeStore(conn)
    assert store.leaf_count() == 0
    assert store.tree_state() == TreeState()
    state, i = TreeState(), 0
    states = {0: state}
    for batch_size in [1, 1, 2, 300, 17, 679]:
        new_state, nodes = state.append(leaves[i : i + batch_size])
        conn.execute("BEGIN IMMEDIATE")
        store.put_nodes(nodes)
        conn.execute("COMMIT")
        state, i = new_state, i + batch_size
        states[state.size] = state
    conn.close()

    conn = sqlite3.connect(path, isolation_level=None)
    store = SqliteNodeStore(conn)  # CREATE TABLE IF NOT EXISTS: keeps the rows
    assert store.leaf_count() == 1000
    assert store.tree_state() == state
    assert state.root() == ref_root(leaves)
    for size, expected in states.items():
        assert tree_state_at(store, size) == expected
    memory = MemoryNodeStore(TreeState().append(leaves)[1])
    for index, size in [(0, 1), (0, 1000), (999, 1000), (511, 513), (600, 777)]:
        assert inclusion_proof(store, index, size) == inclusion_proof(memory, index, size)
        assert inclusion_proof(store, index, size) == ref_path(index, leaves[:size])
    for old_size, new_size in [(1, 1000), (512, 1000), (3, 5), (777, 999)]:
        proof = consistency_proof(store, old_size, new_size)
        assert proof == ref_consistency(old_size, leaves[:new_size])
    with pytest.raises(KeyError):
        inclusion_proof(store, 0, 1001)
    conn.close()


def test_sqlite_node_store_never_overwrites_a_node() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    store = SqliteNodeStore(conn)
    _, nodes = TreeState().append([leaf_hash(b"a"), leaf_hash(b"b")])
    store.put_nodes(nodes)
    with pytest.raises(sqlite3.IntegrityError):
        store.put_nodes([Node(1, 0, SOME_HASH)])
    with pytest.raises(sqlite3.IntegrityError):
        store.put_nodes([Node(0, 5, b"short")])
    assert store.get_nodes([NodeId(1, 0)]) == [nodes[-1].hash]


def test_sqlite_node_store_rolls_back_with_the_batch() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    store = SqliteNodeStore(conn)
    state, nodes = TreeState().append([leaf_hash(b"a")])
    store.put_nodes(nodes)
    _, more = state.append([leaf_hash(b"b"), leaf_hash(b"c")])
    conn.execute("BEGIN IMMEDIATE")
    store.put_nodes(more)
    conn.execute("ROLLBACK")
    assert store.tree_state() == state


def test_sqlite_node_store_truncate_then_regrow() -> None:
    leaves = [leaf_hash(b"event %d" % i) for i in range(100)]
    conn = sqlite3.connect(":memory:", isolation_level=None)
    store = SqliteNodeStore(conn)
    full, nodes = TreeState().append(leaves)
    store.put_nodes(nodes)
    store.truncate(37)
    assert store.leaf_count() == 37
    assert store.tree_state().root() == ref_root(leaves[:37])
    with pytest.raises(KeyError):
        root_at(store, 38)
    regrown, nodes = store.tree_state().append(leaves[37:])
    store.put_nodes(nodes)
    assert regrown == full
    assert (
        conn.execute("SELECT COUNT(*) FROM merkle_nodes").fetchone()[0]
        == 2 * 100 - (100).bit_count()
    )
