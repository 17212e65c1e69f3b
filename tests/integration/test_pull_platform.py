"""``pull --platform`` (issue 17.3/17.4): a malformed platform is a typed error, a single-platform
image built for another platform is refused (as docker does) unless any platform will do,
against Debian's docker-registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastdist.client import Client
from fastdist.errors import FastdistError, InvalidPlatformError, PlatformNotFoundError
from fastdist.oci import Platform
from fastdist.testing.images import (
    BuiltImage,
    File,
    build_image,
    build_index,
    build_layer,
    push_image,
    tar_entries,
)

if TYPE_CHECKING:
    from fastdist.pusher import Pusher
    from fastdist.testing.registry import LocalRegistry

pytestmark = pytest.mark.registry

S390X = Platform("linux", "s390x")
PPC = Platform("linux", "ppc64le")


def _image(tag: str, platform: Platform | None = None) -> BuiltImage:
    layer = build_layer(tar_entries([File("etc/which", f"{tag}\n")]))
    return build_image([layer], platform=platform)


@pytest.mark.parametrize("platform", ["garbage", "linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_a_malformed_platform_is_a_typed_error_before_any_request(
    store_root: Path, platform: str
) -> None:
    client = Client(store_root)
    with pytest.raises(InvalidPlatformError) as e:
        client.pull("127.0.0.1:1/never/asked:v1", platform=platform)
    assert isinstance(e.value, FastdistError)
    assert e.value.hint
    assert "linux/amd64" in e.value.hint


def test_a_single_platform_image_for_another_platform_is_refused_before_its_layers(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    ref = f"{registry.host}/platform/host-only:v1"
    image = _image("host")
    push_image(pusher, ref, image)
    client = Client(store_root)

    with pytest.raises(PlatformNotFoundError) as e:
        client.pull(ref, platform="linux/s390x")
    assert str(Platform.host()) in e.value.message
    assert "linux/s390x" in e.value.message
    assert e.value.hint
    assert "--platform any" in e.value.hint
    assert not client.content.exists(image.layers[0].descriptor.digest)
    assert client.images() == []

    # The host's platform, spelled out, and "any" both pull it.
    assert client.pull(ref, platform=str(Platform.host())).target.digest == image.descriptor.digest
    # Present now: the refusal does not depend on a fetch happening.
    with pytest.raises(PlatformNotFoundError):
        client.pull(ref, platform=S390X)


def test_platform_any_pulls_a_foreign_single_platform_image_and_an_index_without_this_host(
    registry: LocalRegistry, pusher: Pusher, store_root: Path
) -> None:
    foreign = _image("s390x", S390X)
    ref = f"{registry.host}/platform/foreign:v1"
    push_image(pusher, ref, foreign)
    client = Client(store_root, snapshotter="native")
    img = client.pull(ref, platform="any")
    assert img.config().platform == S390X

    index = build_index([_image("ppc", PPC), _image("s390x-2", S390X)])
    iref = f"{registry.host}/platform/no-host:v1"
    push_image(pusher, iref, index)
    with pytest.raises(PlatformNotFoundError):
        client.pull(iref)
    # "any": the index's first entry, when it has none for this host.
    assert client.pull(iref, platform="any").config().platform == PPC
