"""GitHub's JSON shapes turned into the model's types, and what a PR's statuses and check runs add up to.
Pure functions: no requests, no state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fleet_tui.forge.base import ForgeError, RateLimitedError
from fleet_tui.model import Actor, CIState, Comment, Issue, PullRequest, Review, ReviewComment


def time_of(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def actor_of(user: Any, app: Any = None) -> Actor:
    if not isinstance(user, dict):
        return Actor("ghost")
    via = (app.get("slug") or app.get("name")) if isinstance(app, dict) else None
    return Actor(str(user.get("login", "ghost")), str(user.get("type", "User")), via_app=via)


def issue_of(data: dict[str, Any]) -> Issue:
    labels = tuple(str(label["name"]) if isinstance(label, dict) else str(label) for label in data.get("labels", []))
    return Issue(
        number=int(data["number"]), title=str(data.get("title") or ""), body=str(data.get("body") or ""),
        state="closed" if data.get("state") == "closed" else "open", labels=labels, author=actor_of(data.get("user")),
        created_at=time_of(data.get("created_at")), updated_at=time_of(data.get("updated_at")),
        html_url=str(data.get("html_url") or ""),
    )


def comment_of(data: dict[str, Any]) -> Comment:
    return Comment(id=str(data["id"]), author=actor_of(data.get("user"), data.get("performed_via_github_app")),
                   body=str(data.get("body") or ""),
                   created_at=time_of(data.get("created_at")) or datetime.fromtimestamp(0, UTC),
                   html_url=str(data.get("html_url") or ""))


def review_of(data: dict[str, Any]) -> Review:
    return Review(id=str(data["id"]), author=actor_of(data.get("user")), body=str(data.get("body") or ""),
                  state=str(data.get("state") or ""), commit_id=str(data.get("commit_id") or ""),
                  submitted_at=time_of(data.get("submitted_at")))


def review_comment_of(data: dict[str, Any]) -> ReviewComment:
    line = data.get("line")
    return ReviewComment(id=str(data["id"]), author=actor_of(data.get("user")), body=str(data.get("body") or ""),
                         path=str(data.get("path") or ""), line=int(line) if line is not None else None)


EDITS_QUERY = """
query($owner: String!, $name: String!, $number: Int!) {
  repository(owner: $owner, name: $name) {
    issue(number: $number) {
      createdAt
      lastEditedAt
      userContentEdits(first: 100) { nodes { editedAt editor { login __typename } } }
    }
  }
}
"""


def pull_summary(item: dict[str, Any]) -> PullRequest:
    """A PR as the list call gives it: no size, files, mergeability, CI or reviews."""
    return PullRequest(
        number=int(item["number"]), title=str(item.get("title") or ""), body=str(item.get("body") or ""),
        head=str(item["head"]["ref"]), base=str(item["base"]["ref"]), head_sha=str(item["head"]["sha"]),
        html_url=str(item.get("html_url") or ""), state="closed" if item.get("state") == "closed" else "open",
        author=actor_of(item.get("user")), draft=bool(item.get("draft")), updated_at=time_of(item.get("updated_at")),
        head_repo=head_repo_of(item),
    )


def head_repo_of(item: dict[str, Any]) -> str:
    """The head branch's repository ("owner/name"); "" when GitHub no longer knows it (a deleted fork)."""
    repo = (item.get("head") or {}).get("repo")
    return str(repo.get("full_name") or "") if isinstance(repo, dict) else ""


def branch_sha(branch: dict[str, Any] | None) -> str:
    return str(((branch or {}).get("commit") or {}).get("sha") or "")


def required_checks(branch: dict[str, Any] | None) -> frozenset[str]:
    """The status contexts and check names the branch's protection or the repository's rulesets require."""
    names: set[str] = set()
    checks = (((branch or {}).get("protection") or {}).get("required_status_checks") or {})
    if checks.get("enforcement_level") != "off":
        names |= {str(c) for c in checks.get("contexts") or []}
        names |= {str(c["context"]) for c in checks.get("checks") or [] if isinstance(c, dict) and c.get("context")}
    for rule in (branch or {}).get("fleet_rules") or []:
        if isinstance(rule, dict) and rule.get("type") == "required_status_checks":
            for check in (rule.get("parameters") or {}).get("required_status_checks") or []:
                if isinstance(check, dict) and check.get("context"):
                    names.add(str(check["context"]))
    return frozenset(names)


def forbidden(exc: ForgeError) -> bool:
    """A 403 that is a missing permission (not a rate limit)."""
    if isinstance(exc, RateLimitedError):
        return False
    return getattr(exc, "status", None) == 403 or "lacks a permission" in str(exc)


def settled(pull: PullRequest) -> bool:
    """Nothing left for GitHub to compute: mergeability known and CI not pending."""
    return pull.mergeable is not None and pull.mergeable_state != "unknown" and pull.ci != CIState.PENDING


OUTCOME_RANK = {"success": 0, "pending": 1, "failure": 2}


def record_outcome(outcomes: dict[str, str], name: str, outcome: str) -> None:
    """A check's outcome; a name reported twice (a status and a check run) keeps the worse one."""
    if OUTCOME_RANK[outcome] >= OUTCOME_RANK.get(outcomes.get(name, "success"), 0) or name not in outcomes:
        outcomes[name] = outcome


def ci_verdict(outcomes: dict[str, str], required: frozenset[str]) -> tuple[CIState, str]:
    """CI state and summary from each check's outcome; with required checks, only those decide."""
    if not outcomes and not required:
        return CIState.NONE, "no checks"
    passed = sorted(n for n, o in outcomes.items() if o == "success")
    failing = sorted(n for n, o in outcomes.items() if o == "failure")
    pending = sorted(n for n, o in outcomes.items() if o == "pending")
    missing = sorted(required - set(outcomes))
    parts = [f"{len(passed)}/{len(outcomes)} checks passed"]
    if failing:
        parts.append(f"{len(failing)} failing: {', '.join(failing)}")
    if pending:
        parts.append(f"{len(pending)} pending: {', '.join(pending)}")
    if missing:
        parts.append(f"{len(missing)} required not reported: {', '.join(missing)}")
    summary = ", ".join(parts)
    if required:
        decisive = {n: outcomes.get(n, "pending") for n in required}
        summary += f" (required: {', '.join(sorted(required))})"
    else:
        decisive = outcomes
    states = set(decisive.values())
    if "failure" in states:
        return CIState.FAILURE, summary
    if "pending" in states:
        return CIState.PENDING, summary
    return CIState.SUCCESS, summary
