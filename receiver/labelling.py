"""Metric label values for what a sender names: a closed set per provider, the rest ``other``.

The ``event`` label of ``fluxrelay_receiver_deliveries`` is the one label whose value comes
from the request (a header such as ``X-GitHub-Event``, a body field such as ACR's ``action``
or a CDEvent's ``context.type``). Every distinct value is a series kept for the life of the
process and written on every scrape, so a sender choosing the value chooses the memory and
the ``/metrics`` size: 200 made-up CDEvent types made 200 series, 40 types of 500 KB added
38 MiB to every scrape. Hence the policy: a value becomes its own label only when the
provider documents it; anything else is :data:`OTHER`. The set of documented names is small
and fixed per provider, so the series a sender can cause are bounded by the configuration
(Receivers x documented events x outcomes), whatever it sends.

The lookup is one dict access per delivery (no pattern is matched per request), and the label
is always the table's own string, never the request's: a series key holds no reference to a
request's (possibly huge) header or body text.

The tables list the names each provider's documentation or source gives; a provider that
sends a name missing here is counted under ``other`` (and still stored and filtered by
``spec.events`` as usual): adding the name to its table is the fix, never passing the raw
value through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from schemas.cdevents.catalog import RELEASES

OTHER = "other"
"""The label of every value outside a provider's documented set."""
NONE = ""
"""No event known: refused before the body was understood, or a provider without events."""

GITHUB_EVENTS = frozenset(
    {
        "branch_protection_configuration", "branch_protection_rule", "cache_sync", "check_run",
        "check_suite", "code_scanning_alert", "commit_comment", "create", "custom_property",
        "custom_property_values", "delete", "dependabot_alert", "deploy_key", "deployment",
        "deployment_protection_rule", "deployment_review", "deployment_status", "discussion",
        "discussion_comment", "dismissal_request_code_scanning",
        "dismissal_request_secret_scanning", "enterprise", "exemption_request_push_ruleset",
        "exemption_request_secret_scanning", "fork", "github_app_authorization", "gollum",
        "installation", "installation_repositories", "installation_target", "issue_comment",
        "issue_dependencies", "issues", "label", "marketplace_purchase", "member", "membership",
        "merge_group", "meta", "milestone", "org_block", "organization",
        "organization_custom_property", "organization_custom_property_values", "package",
        "page_build", "personal_access_token_request", "ping", "project", "project_card",
        "project_column", "projects_v2", "projects_v2_item", "projects_v2_status_update",
        "public", "pull_request", "pull_request_review", "pull_request_review_comment",
        "pull_request_review_thread", "push", "registry_package", "release", "repository",
        "repository_advisory", "repository_dispatch", "repository_import", "repository_ruleset",
        "repository_vulnerability_alert", "secret_scanning_alert",
        "secret_scanning_alert_location", "secret_scanning_scan", "security_advisory",
        "security_and_analysis", "sponsorship", "star", "status", "sub_issues", "team",
        "team_add", "user", "watch", "workflow_dispatch", "workflow_job", "workflow_run",
    }
)  # fmt: skip
"""``X-GitHub-Event`` values of github.com, GitHub Enterprise Cloud and Server webhooks."""

GITLAB_EVENTS = frozenset(
    {
        "Push Hook", "Tag Push Hook", "Issue Hook", "Confidential Issue Hook", "Note Hook",
        "Confidential Note Hook", "Merge Request Hook", "Wiki Page Hook", "Pipeline Hook",
        "Job Hook", "Deployment Hook", "Feature Flag Hook", "Release Hook", "Emoji Hook",
        "Milestone Hook", "Resource Access Token Hook", "Resource Deploy Token Hook",
        "Member Hook", "Project Hook", "Subgroup Hook", "Vulnerability Hook", "System Hook",
    }
)  # fmt: skip
"""``X-Gitlab-Event`` values: project and group hooks (the hook kind, titled) and system hooks."""

GITEA_EVENTS = frozenset(
    {
        "create", "delete", "fork", "push", "issues", "issue_comment", "pull_request",
        "pull_request_approved", "pull_request_rejected", "pull_request_comment", "wiki",
        "repository", "release", "package", "status", "schedule", "workflow_run",
        "workflow_job", "action_run_failure", "action_run_recover", "action_run_success",
    }
)  # fmt: skip
"""``X-Gitea-Event`` / ``X-Forgejo-Event`` values (the event names, not ``X-*-Event-Type``'s
finer ones such as ``issue_label``); the ``action_run_*`` ones are Forgejo's."""

BITBUCKET_EVENTS = frozenset(
    {
        # Bitbucket Cloud
        "repo:push", "repo:fork", "repo:updated", "repo:transfer", "repo:created",
        "repo:deleted", "repo:imported", "repo:commit_comment_created",
        "repo:commit_status_created", "repo:commit_status_updated", "issue:created",
        "issue:updated", "issue:comment_created", "project:updated", "pullrequest:created",
        "pullrequest:updated", "pullrequest:push", "pullrequest:approved",
        "pullrequest:unapproved", "pullrequest:changes_request_created",
        "pullrequest:changes_request_removed", "pullrequest:fulfilled", "pullrequest:rejected",
        "pullrequest:comment_created", "pullrequest:comment_updated",
        "pullrequest:comment_deleted", "pullrequest:comment_resolved",
        "pullrequest:comment_reopened", "pipeline:span_created",
        # Bitbucket Server / Data Center
        "repo:refs_changed", "repo:modified", "repo:forked", "repo:comment:added",
        "repo:comment:edited", "repo:comment:deleted", "repo:secret_detected",
        "mirror:repo_synchronized", "project:modified", "pr:opened", "pr:from_ref_updated",
        "pr:to_ref_updated", "pr:modified", "pr:reviewer:updated", "pr:reviewer:approved",
        "pr:reviewer:unapproved", "pr:reviewer:needs_work", "pr:reviewer:changes_requested",
        "pr:merged", "pr:declined", "pr:deleted", "pr:comment:added", "pr:comment:edited",
        "pr:comment:deleted", "diagnostics:ping",
    }
)  # fmt: skip
"""``X-Event-Key`` values of Bitbucket Cloud and Bitbucket Server/Data Center."""

AZURE_DEVOPS_EVENTS = frozenset(
    {
        "build.complete", "ms.vss-release.release-created-event",
        "ms.vss-release.release-abandoned-event",
        "ms.vss-release.deployment-approval-completed-event",
        "ms.vss-release.deployment-approval-pending-event",
        "ms.vss-release.deployment-completed-event", "ms.vss-release.deployment-started-event",
        "ms.vss-pipelines.run-state-changed-event", "ms.vss-pipelines.stage-state-changed-event",
        "ms.vss-pipelines.job-state-changed-event",
        "ms.vss-pipelinechecks-events.approval-pending",
        "ms.vss-pipelinechecks-events.approval-completed", "tfvc.checkin", "git.push",
        "git.pullrequest.created", "git.pullrequest.merged", "git.pullrequest.updated",
        "ms.vss-code.git-pullrequest-comment-event", "git.repo.created", "git.repo.deleted",
        "git.repo.forked", "git.repo.renamed", "git.repo.statuschanged", "workitem.commented",
        "workitem.created", "workitem.deleted", "workitem.restored", "workitem.updated",
        "ms.vss-endpoint.endpoint-created", "ms.vss-endpoint.endpoint-updated",
    }
)  # fmt: skip
"""Service hook event ids (the body's ``eventType``)."""

HARBOR_EVENTS = frozenset(
    {
        "PUSH_ARTIFACT", "PULL_ARTIFACT", "DELETE_ARTIFACT", "SCANNING_COMPLETED",
        "SCANNING_FAILED", "SCANNING_STOPPED", "QUOTA_EXCEED", "QUOTA_WARNING", "REPLICATION",
        "TAG_RETENTION", "UPLOAD_CHART", "DOWNLOAD_CHART", "DELETE_CHART",
    }
)  # fmt: skip
"""Harbor notification types (the body's ``type``; the chart ones are pre-2.8 Harbor's)."""

ACR_EVENTS = frozenset({"push", "delete", "quarantine", "chart_push", "chart_delete", "ping"})
"""Azure Container Registry webhook actions."""
NEXUS_EVENTS = frozenset({"CREATED", "UPDATED", "DELETED"})
"""Nexus repository component and asset webhook actions."""
GCR_EVENTS = frozenset({"INSERT", "DELETE"})
"""Artifact Registry / Container Registry Pub/Sub notification actions."""
DISTRIBUTION_EVENTS = frozenset({"push", "pull", "mount", "delete"})
"""CNCF Distribution notification actions."""

CDEVENT_LABELS: Mapping[str, str] = MappingProxyType(
    {spec.type: spec.key for release in RELEASES for spec in release.events}
)
"""Every versioned CDEvents type of the supported spec releases → its ``subject.predicate``:
one label per event whatever its version (the reconciler's ``type`` labels use the same
name). Custom (``dev.cdeventsx.*``) types and versions outside the catalogue are ``other``."""


def _identity(names: Iterable[str]) -> dict[str, str]:
    return {NONE: NONE, **{name: name for name in names}}


EVENT_LABELS: Mapping[str, Mapping[str, str]] = {
    NONE: _identity(()),  # refused before a Receiver was found: no provider either
    "github": _identity(GITHUB_EVENTS),
    "gitlab": _identity(GITLAB_EVENTS),
    "gitea": _identity(GITEA_EVENTS),
    "forgejo": _identity(GITEA_EVENTS),
    "bitbucket": _identity(BITBUCKET_EVENTS),
    "azuredevops": _identity(AZURE_DEVOPS_EVENTS),
    "harbor": _identity(HARBOR_EVENTS),
    "acr": _identity(ACR_EVENTS),
    "nexus": _identity(NEXUS_EVENTS),
    "gcr": _identity(GCR_EVENTS),
    "distribution": _identity(DISTRIBUTION_EVENTS),
    "cdevents": {NONE: NONE, **CDEVENT_LABELS},
    # No event types at all: the event is always empty.
    "generic": _identity(()),
    "generic-hmac": _identity(()),
    "generic-oidc": _identity(()),
    "dockerhub": _identity(()),
    "quay": _identity(()),
}
"""Provider name → (event as received → label). A provider missing here labels every event
``other`` (a test requires every provider to have an entry). Plain dicts, read-only by type
only: looked up on every delivery, where a ``MappingProxyType`` tripled the lookup's cost."""

NO_EVENTS: Mapping[str, str] = {}
"""The table of a provider not in :data:`EVENT_LABELS`: every event is ``other``."""


def event_label(provider: str, event: str) -> str:
    """The ``event`` label for ``event`` received by ``provider``: the documented name (for
    CDEvents its ``subject.predicate``), ``""`` when none is known, else :data:`OTHER`."""
    return EVENT_LABELS.get(provider, NO_EVENTS).get(event, OTHER)
