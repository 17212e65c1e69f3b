"""Image configs and root filesystems for the container-run unit tests (spec, users)."""

from __future__ import annotations

from pathlib import Path

from fastdist import oci

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment line is skipped
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
broken:x:notanumber:1::/:/bin/sh
"""


GROUP = """\
root:x:0:
daemon:x:1:
app:x:1000:
audio:x:29:app,daemon
video:x:44:app
staff:x:50:
"""


def image(
    *,
    entrypoint: tuple[str, ...] | None = None,
    cmd: tuple[str, ...] | None = ("sh",),
    env: tuple[str, ...] = (),
    user: str = "",
    working_dir: str = "",
    volumes: tuple[str, ...] = (),
) -> oci.ImageConfig:
    return oci.ImageConfig(
        architecture="amd64",
        os="linux",
        diff_ids=(),
        config=oci.ContainerConfig(
            user=user,
            env=env,
            entrypoint=entrypoint,
            cmd=cmd,
            working_dir=working_dir,
            volumes=volumes,
        ),
    )


def make_rootfs(tmp_path: Path) -> Path:
    """A root filesystem with PASSWD and GROUP as its account files."""
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(PASSWD)
    (r / "etc" / "group").write_text(GROUP)
    return r
