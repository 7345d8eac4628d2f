"""Claims on GitHub: the lock that keeps two orchestrators off one issue, held as a git ref the forge swaps
atomically.

The claim of issue N is the ref `refs/heads/fleet-claims/N`, pointing at a *lease commit* made through the git
database API (the tree of the default branch's head, so it carries no code of its own; the message names the
holder, its run and the lease length). Every step is a compare-and-swap GitHub performs itself:

- acquire: `POST /git/refs` creates the ref; GitHub creates a ref atomically and answers 422 "Reference
  already exists" to everyone after the first, however many ask at once;
- renew, or take over a lease seen expired: a child commit of the lease commit last seen, then
  `PATCH /git/refs/heads/fleet-claims/N` with `force: false`. GitHub moves the ref only as a fast-forward, so if
  anyone moved it since (a renewal, another taker) the new commit is no descendant of the ref's commit and
  GitHub answers 422 "Update is not a fast forward": the loser learns it lost;
- release: `DELETE` the ref once it still points at our lease;
- look: `GET /git/matching-refs/heads/fleet-claims/` lists every claim in one request (a free 304 while
  nothing changed).

Refs are strongly consistent on GitHub (a write is seen by the next read, from any client), unlike issue lists,
labels and comments, which is why the lock lives here and the label and comment are only the record humans read.

Why under `refs/heads/` (a branch namespace): the create-ref endpoint documents refs of the form
`refs/heads/<name>` (and tags); names outside `heads/` and `tags/` are accepted today but not documented, and
the matching-refs endpoint documents `heads/<prefix>` the same way. Branches are also what a human can see and
delete on the repository's page, which is how a stuck claim is cleared by hand. The cost: each claim shows as
a branch `fleet-claims/N`, and a workflow triggered on every push may want `branches-ignore: [fleet-claims/**]`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fleet_tui.forge.base import ClaimLease, ForgeError, NotFound

if TYPE_CHECKING:
    from fleet_tui.forge.github import GitHubForge

CLAIM_BRANCH_PREFIX = "fleet-claims/"
_TRAILER_RE = re.compile(r"^Fleet-(Holder|Run|Issue): *(\S+) *$", re.MULTILINE)
_LOST = ("not a fast forward", "does not exist")


def claim_ref(issue: int) -> str:
    """The ref of `issue`'s claim as the refs endpoints take it (`heads/...`, without `refs/`)."""
    return f"heads/{CLAIM_BRANCH_PREFIX}{int(issue)}"


def lease_message(issue: int, holder: str, run_id: str, lease_s: float) -> str:
    """The lease commit's message: a line a human can read, then trailers the fleet reads back."""
    return (f"fleet claim of issue #{issue}\n\n"
            f"A fleet orchestrator is working on issue #{issue}; this branch is its lock, not code. It renews "
            f"the lease every {lease_s / 3:.0f} s; another orchestrator takes the issue over only after seeing it "
            f"unrenewed for {lease_s:.0f} s. Delete this branch to clear a claim left stuck.\n\n"
            f"Fleet-Issue: {issue}\nFleet-Holder: {holder}\nFleet-Run: {run_id}\nFleet-Lease-Seconds: {lease_s:g}\n")


def parse_lease(message: str) -> tuple[str, str]:
    """(holder, run id) from a lease commit's message; ("", "") when it is none of ours."""
    found = {key.lower(): value for key, value in _TRAILER_RE.findall(message or "")}
    return found.get("holder", ""), found.get("run", "")


class GitHubClaims:
    """The claim calls of one `GitHubForge`, through its request queue (rate limits, retries)."""

    def __init__(self, forge: GitHubForge) -> None:
        self.forge = forge
        self._tree: str | None = None
        self._leases: dict[str, tuple[str, str]] = {}  # lease commit sha -> (holder, run id): commits never change

    async def list(self) -> dict[int, ClaimLease]:
        forge = self.forge
        response = await forge._call(forge._rest.git.async_list_matching_refs, forge.owner, forge.name,
                                     f"heads/{CLAIM_BRANCH_PREFIX}", what="GET claims")
        found: dict[int, ClaimLease] = {}
        for item in response.json() or []:
            ref = str(item.get("ref", "")) if isinstance(item, dict) else ""
            number = ref.removeprefix(f"refs/heads/{CLAIM_BRANCH_PREFIX}")
            if number == ref or not number.isdigit():
                continue
            sha = str((item.get("object") or {}).get("sha", ""))
            holder, run_id = self._leases.get(sha, ("", ""))
            found[int(number)] = ClaimLease(int(number), sha, holder, run_id)
        return found

    async def get(self, issue: int) -> ClaimLease | None:
        sha = await self._ref_sha(issue)
        if sha is None:
            return None
        holder, run_id = await self._lease_of(sha)
        return ClaimLease(issue, sha, holder, run_id)

    async def acquire(self, issue: int, holder: str, run_id: str, lease_s: float) -> ClaimLease | None:
        forge = self.forge
        sha = await self._lease_commit(issue, holder, run_id, lease_s, parent=None)
        try:
            await forge._call(forge._rest.git.async_create_ref, forge.owner, forge.name, method="POST",
                              what=f"claim #{issue}", ref=f"refs/{claim_ref(issue)}", sha=sha)
        except ForgeError as exc:
            if getattr(exc, "status", None) != 422:
                raise
            # "Reference already exists" is the answer to lose on; any other 422 ("Reference update failed")
            # is a refusal to retry, told apart by whether the ref is there now
            if await self._ref_sha(issue) is None:
                raise
            return None
        return ClaimLease(issue, sha, holder, run_id)

    async def replace(self, seen: ClaimLease, holder: str, run_id: str, lease_s: float) -> ClaimLease | None:
        forge = self.forge
        sha = await self._lease_commit(seen.issue, holder, run_id, lease_s, parent=seen.version)
        try:
            await forge._call(forge._rest.git.async_update_ref, forge.owner, forge.name, claim_ref(seen.issue),
                              method="PATCH", what=f"renew the claim of #{seen.issue}", sha=sha, force=False)
        except NotFound:
            return None
        except ForgeError as exc:
            if getattr(exc, "status", None) != 422:
                raise
            message = str((getattr(exc, "details", None) or {}).get("message", exc)).lower()
            if any(word in message for word in _LOST):
                return None
            if await self._ref_sha(seen.issue) == seen.version:
                raise  # refused for another reason while still ours to swap: the next renewal tries again
            return None
        return ClaimLease(seen.issue, sha, holder, run_id)

    async def release(self, lease: ClaimLease) -> None:
        forge = self.forge
        if await self._ref_sha(lease.issue) != lease.version:
            return  # moved or gone: not ours to drop
        try:
            await forge._call(forge._rest.git.async_delete_ref, forge.owner, forge.name, claim_ref(lease.issue),
                              method="DELETE", what=f"release the claim of #{lease.issue}")
        except NotFound:
            return
        except ForgeError as exc:
            if getattr(exc, "status", None) != 422:  # 422 "Reference does not exist": already gone
                raise

    # --- helpers ------------------------------------------------------------------------------------

    async def _ref_sha(self, issue: int) -> str | None:
        forge = self.forge
        try:
            response = await forge._call(forge._rest.git.async_get_ref, forge.owner, forge.name, claim_ref(issue),
                                         what=f"GET the claim of #{issue}")
        except NotFound:
            return None
        data: Any = response.json()
        return str((data.get("object") or {}).get("sha", "")) or None if isinstance(data, dict) else None

    async def _lease_of(self, sha: str) -> tuple[str, str]:
        if sha not in self._leases:
            forge = self.forge
            try:
                response = await forge._call(forge._rest.git.async_get_commit, forge.owner, forge.name, sha,
                                             what="GET lease commit")
            except NotFound:
                return "", ""
            data = response.json()
            self._leases[sha] = parse_lease(str(data.get("message", "")) if isinstance(data, dict) else "")
        return self._leases[sha]

    async def _lease_commit(self, issue: int, holder: str, run_id: str, lease_s: float, *,
                            parent: str | None) -> str:
        forge = self.forge
        tree = await self._base_tree()
        response = await forge._call(forge._rest.git.async_create_commit, forge.owner, forge.name, method="POST",
                                     what=f"lease commit for #{issue}",
                                     message=lease_message(issue, holder, run_id, lease_s), tree=tree,
                                     parents=[parent] if parent else [])
        data = response.json()
        sha = str(data.get("sha", "")) if isinstance(data, dict) else ""
        if not sha:
            raise ForgeError(f"GitHub lease commit for #{issue}: no sha in the answer")
        self._leases[sha] = (holder, run_id)
        return sha

    async def _base_tree(self) -> str:
        """The tree of the default branch's head (any existing tree will do; read once)."""
        if self._tree is None:
            forge = self.forge
            branch = await forge.default_branch()
            data = await forge._branch(branch)
            tree = str(((((data or {}).get("commit") or {}).get("commit") or {}).get("tree") or {}).get("sha", ""))
            if not tree:
                raise ForgeError(f"GitHub: cannot claim issues in {forge.repo} before it has a commit on {branch}")
            self._tree = tree
        return self._tree
