"""Repository keys: every URL form of one Git repository, and of one image, gives one key.

Covers https/http/ssh/scp-like forms, credentials, ports, ``.git``, trailing slashes and case;
Azure DevOps's four URL families; things that are not repository URLs; and OCI references
(``oci://``, Docker Hub short names and aliases, registry ports, tags and digests).
"""

from __future__ import annotations

import pytest

from reconciler.urls import normalise_git_url, normalise_image, parse_image

GITHUB = "github.com/org/repo"
AZURE = "dev.azure.com/org/proj/repo"


@pytest.mark.parametrize(
    ("url", "key"),
    [
        pytest.param("https://github.com/org/repo", GITHUB, id="https-plain"),
        pytest.param("https://github.com/Org/Repo.git", GITHUB, id="https-dotgit-mixed-case"),
        pytest.param("http://github.com/org/repo", GITHUB, id="http"),
        pytest.param("https://GitHub.COM/org/repo/", GITHUB, id="host-case-trailing-slash"),
        pytest.param("https://github.com/org/repo.git/", GITHUB, id="dotgit-then-slash"),
        pytest.param("https://github.com:443/org/repo", GITHUB, id="https-default-port"),
        pytest.param("https://user:token@github.com/org/repo", GITHUB, id="https-credentials"),
        pytest.param("ssh://git@github.com/org/repo", GITHUB, id="ssh-url"),
        pytest.param("ssh://git@github.com:22/org/repo.git", GITHUB, id="ssh-url-port-dotgit"),
        pytest.param("git@github.com:org/repo.git", GITHUB, id="ssh-scp-with-dotgit"),
        pytest.param("git@github.com:org/repo", GITHUB, id="ssh-scp-without-dotgit"),
        pytest.param("github.com:org/repo", GITHUB, id="ssh-scp-without-user"),
        pytest.param("git://github.com/org/repo.git", GITHUB, id="git-protocol"),
        pytest.param("  https://github.com/org/repo  ", GITHUB, id="surrounding-whitespace"),
        pytest.param(
            "ssh://git@gitlab.example.com:2222/group/sub/repo.git",
            "gitlab.example.com/group/sub/repo",
            id="self-hosted-ssh-port-dropped",
        ),
        pytest.param(
            "https://gitlab.example.com/group/sub/repo",
            "gitlab.example.com/group/sub/repo",
            id="self-hosted-https-subgroups",
        ),
        pytest.param("https://dev.azure.com/org/proj/_git/repo", AZURE, id="azure-https"),
        pytest.param("https://org@dev.azure.com/org/proj/_git/repo", AZURE, id="azure-https-user"),
        pytest.param("git@ssh.dev.azure.com:v3/org/proj/repo", AZURE, id="azure-ssh-scp"),
        pytest.param("ssh://git@ssh.dev.azure.com/v3/org/proj/repo", AZURE, id="azure-ssh-url"),
        pytest.param("https://org.visualstudio.com/proj/_git/repo", AZURE, id="azure-vs-https"),
        pytest.param(
            "https://org.visualstudio.com/DefaultCollection/proj/_git/repo",
            AZURE,
            id="azure-vs-default-collection",
        ),
        pytest.param("org@vs-ssh.visualstudio.com:v3/org/proj/repo", AZURE, id="azure-vs-ssh"),
        pytest.param(
            "https://dev.azure.com/Org/Proj/_git/_optimized/Repo", AZURE, id="azure-optimized"
        ),
        pytest.param(
            "https://dev.azure.com/org/repo/_git/repo",
            "dev.azure.com/org/repo/repo",
            id="azure-project-named-like-repo",
        ),
        pytest.param(
            "https://dev.azure.com/org/_git/repo",
            "dev.azure.com/org/repo/repo",
            id="azure-project-omitted",
        ),
    ],
)
def test_every_form_of_a_repository_gives_its_key(url: str, key: str) -> None:
    assert normalise_git_url(url) == key


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("not a url", id="words"),
        pytest.param("ftp://github.com/org/repo", id="unsupported-scheme"),
        pytest.param("https://github.com", id="host-only"),
        pytest.param("https://github.com/", id="host-slash-only"),
        pytest.param("https://[broken/org/repo", id="unparseable-ipv6"),
    ],
)
def test_non_repository_urls_have_no_key(url: str) -> None:
    assert normalise_git_url(url) is None


def test_different_repositories_keep_different_keys() -> None:
    keys = {
        normalise_git_url(u)
        for u in (
            "https://github.com/org/repo",
            "https://github.com/org/repo2",
            "https://github.com/other/repo",
            "https://gitlab.com/org/repo",
            "https://github.com/org/repo/sub",
        )
    }
    assert len(keys) == 5


def test_credentials_never_reach_the_key() -> None:
    key = normalise_git_url("https://x-access-token:s3cr3t@github.com/org/repo")
    assert key is not None
    assert "s3cr3t" not in key
    assert "x-access-token" not in key


@pytest.mark.parametrize(
    ("reference", "key"),
    [
        pytest.param("oci://ghcr.io/org/app", ("ghcr.io", "org/app"), id="oci-scheme"),
        pytest.param("ghcr.io/org/app", ("ghcr.io", "org/app"), id="bare"),
        pytest.param("ghcr.io/Org/App:v1.2.3", ("ghcr.io", "org/app"), id="tag-and-case"),
        pytest.param("GHCR.IO/org/app", ("ghcr.io", "org/app"), id="registry-case"),
        pytest.param("ghcr.io:443/org/app", ("ghcr.io", "org/app"), id="default-port-dropped"),
        pytest.param("nginx", ("docker.io", "library/nginx"), id="hub-official-short"),
        pytest.param("nginx:1.25", ("docker.io", "library/nginx"), id="hub-official-tag"),
        pytest.param("library/nginx", ("docker.io", "library/nginx"), id="hub-library"),
        pytest.param("org/app", ("docker.io", "org/app"), id="hub-user-repo"),
        pytest.param("docker.io/nginx", ("docker.io", "library/nginx"), id="hub-explicit"),
        pytest.param("index.docker.io/nginx", ("docker.io", "library/nginx"), id="hub-index"),
        pytest.param("registry-1.docker.io/org/app", ("docker.io", "org/app"), id="hub-registry-1"),
        pytest.param("localhost:5000/app:dev", ("localhost:5000", "app"), id="localhost-with-port"),
        pytest.param("localhost/app", ("localhost", "app"), id="localhost"),
        pytest.param(
            "registry.example.com:5000/team/app@sha256:" + "a" * 64,
            ("registry.example.com:5000", "team/app"),
            id="port-kept-and-digest",
        ),
        pytest.param(
            "oci://ghcr.io/org/app:v1@sha256:" + "b" * 64,
            ("ghcr.io", "org/app"),
            id="tag-and-digest",
        ),
    ],
)
def test_every_form_of_an_image_gives_its_key(reference: str, key: tuple[str, str]) -> None:
    assert normalise_image(reference) == key


def test_parse_image_keeps_tag_and_digest() -> None:
    parsed = parse_image("ghcr.io/org/app:v1.2.3@sha256:" + "c" * 64)
    assert parsed is not None
    assert parsed.tag == "v1.2.3"
    assert parsed.digest == "sha256:" + "c" * 64


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param("", id="empty"),
        pytest.param("https://ghcr.io/org/app", id="http-url-is-not-a-reference"),
        pytest.param("oci://", id="scheme-only"),
    ],
)
def test_non_references_have_no_image_key(reference: str) -> None:
    assert normalise_image(reference) is None
