"""Files on a local disk or behind a URI (s3://, gs://, ...), through pyarrow's filesystems.

Everything that reads inputs or writes outputs goes through here, so a local folder and a bucket
behave the same. Credentials come the usual way for each store (for S3: the environment, a profile,
or an instance role), never from a colorjob file. ``AWS_ENDPOINT_URL`` points S3 at another server.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

TMP_MARK = ".colorjob-tmp-"


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def resolve(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or a URI."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).absolute())
    if path.startswith("s3://"):
        bucket_path = path[len("s3://") :].rstrip("/")
        opts = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            opts = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            opts["region"] = region
        return pafs.S3FileSystem(**opts), bucket_path
    fs, inner = pafs.FileSystem.from_uri(path)
    return fs, inner.rstrip("/")


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts if p]])


def list_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """Every file below ``root``, as paths relative to it (sorted)."""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = root.rstrip("/") + "/"
    return sorted(
        i.path[len(prefix) :]
        for i in infos
        if i.type == pafs.FileType.File and i.path.startswith(prefix)
    )


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write so that a reader never sees half a file: temp + rename locally; a single PUT on S3."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/{TMP_MARK}{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:  # object stores make an upload visible all at once
        with fs.open_output_stream(path) as f:
            f.write(data)


def download_dir(uri: str, dest: str | Path) -> Path:
    """Copy a remote folder (a model directory) to a local one; a local path is returned as is."""
    if not is_uri(uri):
        return Path(uri)
    fs, root = resolve(uri)
    dest = Path(dest)
    for rel in list_files(fs, root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(fs, join(root, rel)))
    return dest
