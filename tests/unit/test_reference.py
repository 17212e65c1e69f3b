"""Reference parsing follows docker's normalisation (distribution/reference) exactly."""

from __future__ import annotations

import pytest

from fastdist.errors import InvalidReferenceError, UnsupportedMediaTypeError
from fastdist.oci import Digest
from fastdist.reference import Reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest", "canonical"),
    [
        ("redis", "docker.io", "library/redis", "latest", None, "docker.io/library/redis:latest"),
        ("library/redis", "docker.io", "library/redis", "latest", None, None),
        ("docker.io/redis", "docker.io", "library/redis", "latest", None, None),
        ("index.docker.io/library/redis", "docker.io", "library/redis", "latest", None, None),
        ("index.docker.io/redis:7", "docker.io", "library/redis", "7", None, None),
        ("user/app:v1.2", "docker.io", "user/app", "v1.2", None, "docker.io/user/app:v1.2"),
        ("localhost/a", "localhost", "a", "latest", None, "localhost/a:latest"),
        ("localhost:5000/a", "localhost:5000", "a", "latest", None, "localhost:5000/a:latest"),
        ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", None, None),
        ("ghcr.io/owner/repo", "ghcr.io", "owner/repo", "latest", None, None),
        (
            f"host.example/a/b:tag@{D}",
            "host.example",
            "a/b",
            "tag",
            D,
            f"host.example/a/b:tag@{D}",
        ),
        (f"redis@{D}", "docker.io", "library/redis", None, D, f"docker.io/library/redis@{D}"),
        ("a.b/c__d.e-f--g", "a.b", "c__d.e-f--g", "latest", None, None),
        ("Example.com/repo", "Example.com", "repo", "latest", None, None),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", None, None),
    ],
)
def test_reference_normalises_like_docker(
    text: str, domain: str, path: str, tag: str | None, digest: str | None, canonical: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    if canonical is not None:
        assert str(ref) == canonical
    # str() round-trips to the same reference
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Redis", "lowercase"),
        ("docker.io/Library/redis", "lowercase"),
        ("redis:", "bad tag"),
        ("redis:-bad", "bad tag"),
        ("redis:" + "a" * 129, "bad tag"),
        ("redis@sha256:abc", "digest"),
        ("redis@sha256:" + "AB" * 32, "digest"),
        ("", "empty"),
        ("re dis", "whitespace"),
        ("host.example/", "empty repository"),
        ("a//b", "bad repository"),
        ("a/b_", "bad repository"),
        ("-host.example/a", "bad domain"),
        ("host.example/" + "a" * 260, "longer than"),
        ("http://localhost:5000/a:b", "not a http:// URL"),
        ("HTTPS://ghcr.io/a/b", "not a https:// URL"),
    ],
)
def test_invalid_references_raise_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse(text)
    assert fragment in info.value.message


def test_uppercase_repository_hints_the_lowercase_form() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse("docker.io/Library/Redis")
    assert info.value.hint is not None
    assert "docker.io/library/redis" in info.value.hint


def test_other_digest_algorithms_are_refused() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="only sha256"):
        Reference.parse("redis@sha512:" + "ab" * 64)


def test_registry_maps_docker_hub_to_its_api_host() -> None:
    assert Reference.parse("redis").registry == "registry-1.docker.io"
    assert Reference.parse("localhost:5000/a").registry == "localhost:5000"
    assert Reference.parse("redis").name == "docker.io/library/redis"


def test_object_prefers_the_digest_over_the_tag() -> None:
    assert Reference.parse("redis:7").object == "7"
    assert Reference.parse(f"redis:7@{D}").object == D
    assert Reference.parse("redis").with_digest(Digest(D)).object == D
    assert (
        str(Reference.parse("redis").with_digest(Digest(D)))
        == f"docker.io/library/redis:latest@{D}"
    )


def test_a_url_for_a_reference_hints_the_form_without_the_scheme() -> None:
    with pytest.raises(InvalidReferenceError) as info:
        Reference.parse("http://localhost:5000/demo/app:v1")
    assert info.value.hint is not None
    assert "drop the scheme: localhost:5000/demo/app:v1" in info.value.hint
    assert "--plain-http" in info.value.hint


def test_token_scopes_name_the_repository_path_without_the_registry() -> None:
    assert Reference.parse("redis").scope() == "repository:library/redis:pull"
    ref = Reference.parse("localhost:5000/org/app:1")
    assert ref.scope("pull,push") == "repository:org/app:pull,push"
