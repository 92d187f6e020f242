"""Files on a local disk or behind a URI (s3://, gs://, ...), through pyarrow's filesystems.

Everything that reads inputs or writes outputs goes through here, so a local folder and a bucket
behave the same. Credentials come the usual way for each store (for S3: the environment, a profile,
or an instance role), never from a colorjob file. ``AWS_ENDPOINT_URL`` points S3 at another server.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from colorjob.errors import ColorjobError

TMP_MARK = ".colorjob-tmp-"


class StorageError(ColorjobError, OSError):
    """A location that cannot be reached or used; the message says what to check."""


def explain(uri: str, err: BaseException) -> StorageError:
    """A readable error for a failed access to ``uri`` (wrong bucket, credentials, endpoint)."""
    msg = str(err)
    hint = ""
    if is_uri(uri) and str(uri).startswith("s3://"):
        low = msg.lower()
        if (
            "no_such_bucket" in low
            or "nosuchbucket" in low
            or ("bucket" in low and "not found" in low)
        ):
            hint = "the bucket does not exist (check the name and the region/endpoint)"
        elif not _visible_credentials():
            hint = "no AWS credentials were found in the environment or ~/.aws"
        elif "access_denied" in low or "accessdenied" in low or "forbidden" in low or "403" in low:
            hint = "access denied: the credentials in use may not read/write this bucket"
        elif (
            "credential" in low
            or "invalid_access_key" in low
            or "signature" in low
            or "security token" in low
        ):
            hint = "the AWS credentials were rejected"
        elif "connect" in low or "curl" in low or "network" in low:
            hint = "the S3 endpoint could not be reached (AWS_ENDPOINT_URL, network)"
        hint = (
            f"{hint + '; ' if hint else ''}credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or an instance role; AWS_ENDPOINT_URL points at another S3 server"
        )
    return StorageError(
        f"cannot use {uri}: {msg.strip().splitlines()[0] if msg.strip() else type(err).__name__}"
        + (f" ({hint})" if hint else "")
    )


def _visible_credentials() -> bool:
    """Whether AWS credentials are configured where this process can see them (an instance role
    cannot be seen from here, so False means 'probably none', not 'certainly none')."""
    env = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
           "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")  # fmt: skip
    if any(os.environ.get(k) for k in env):
        return True
    files = [
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    ]
    return any(Path(f).expanduser().is_file() for f in files)


def check(uri: str | Path, writable: bool = False) -> None:
    """Fail early and clearly if ``uri`` cannot be reached (and, with ``writable``, written)."""
    fs, path = resolve(uri)
    try:
        fs.get_file_info(path)
        if writable and not is_uri(uri):  # probe the nearest folder that exists: create nothing
            here = Path(path)
            while not here.exists() and here != here.parent:
                here = here.parent
            import tempfile

            with tempfile.TemporaryFile(dir=here, prefix=f"{TMP_MARK}probe-"):
                pass
        elif writable:
            probe = f"{path.rstrip('/')}/{TMP_MARK}probe-{uuid.uuid4().hex}"
            with fs.open_output_stream(probe) as f:
                f.write(b"")
            fs.delete_file(probe)
    except OSError as e:
        raise explain(str(uri), e) from None


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


MAX_NAME = 255  # bytes of one path component (ext4, APFS, NTFS, S3 key segments)


def process_tag() -> str:
    """Whose temporary files these are when no run id is given: this process on this host
    (``p<pid>@<host hash>``), so a later run can tell a dead writer's leftovers from live ones."""
    import hashlib
    import socket

    return f"p{os.getpid()}@{hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]}"


def temp_name(name: str, run: str | None = None) -> str:
    """A temporary file name for ``name``: ``.colorjob-tmp-<owner>-<random>-<name>``, the same
    extension, and never longer than a file name may be (a long ``name`` is shortened, its
    extension kept). ``run`` names the owner (a batch run id); default: :func:`process_tag`."""
    head = f"{TMP_MARK}{run or process_tag()}-{uuid.uuid4().hex[:12]}-"
    room = MAX_NAME - len(head.encode())
    raw = name.encode()
    if len(raw) > room:
        ext = os.path.splitext(name)[1]
        ext = ext if len(ext.encode()) < room // 2 else ""
        keep = raw[: room - len(ext.encode())].decode(errors="ignore")
        name = keep + ext
    return head + name


_PROCESS_TAG = re.compile(r"^\.colorjob-tmp-p(\d+)@([0-9a-f]{6})-[0-9a-f]{12}-")


def stale_temporaries(folder: str | Path) -> list[Path]:
    """Temporary files and folders directly in ``folder`` left by a writer process of this host
    that no longer runs (a training killed mid-write): safe to delete, nobody will finish them."""
    import hashlib
    import socket

    folder, mine = Path(folder), hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
    out = []
    if not folder.is_dir():
        return out
    for p in folder.iterdir():
        m = _PROCESS_TAG.match(p.name)
        if m and m.group(2) == mine and not _alive(int(m.group(1))):
            out.append(p)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(*folders: str | Path) -> int:
    """Delete :func:`stale_temporaries` of ``folders``; returns how many."""
    n = 0
    for folder in folders:
        for p in stale_temporaries(folder):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
    return n


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new file in ``path`` durable (no-op where directories cannot sync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | Path, run: str | None = None, durable: bool = True, tmp_dir: str | Path | None = None) -> Iterator[Path]:  # fmt: skip
    """A temporary path beside ``path`` (or in ``tmp_dir``, on the same file system), renamed
    onto it when the block ends without error: readers see the old file or the whole new one,
    never half of it. ``durable``: the data and the rename are synced to disk first, so a power
    cut cannot leave an empty file either."""
    path = Path(path)
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tmp_dir) / temp_name(path.name, run)
    else:
        tmp = path.with_name(temp_name(path.name, run))  # keeps the extension
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


@contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """A new, empty folder beside ``path``, swapped in for it as a unit when the block ends
    without error: ``path`` always holds the complete old contents or the complete new ones."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StorageError(f"{path} is a file, not a folder: it is not replaced by one")
    path.parent.mkdir(parents=True, exist_ok=True)
    new = path.with_name(temp_name(path.name))
    new.mkdir()  # the process's umask decides its permissions, as for any folder
    try:
        yield new
        for f in new.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        fsync_dir(new)
        if not path.exists():
            os.rename(new, path)
        elif _exchange(new, path):  # new now holds the old contents
            pass
        else:  # no atomic exchange here: move the old aside, the new in, and undo on failure
            old = path.with_name(temp_name(path.name + ".old"))
            os.rename(path, old)
            try:
                os.rename(new, path)
            except BaseException:
                os.rename(old, path)
                raise
            os.rename(old, new)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes, run: str | None = None, tmp_dir: str | None = None) -> None:  # fmt: skip
    """Write so that a reader never sees half a file: temp + fsync + rename locally (the folder
    synced too); a single PUT on object stores. ``run`` marks whose temporary file it is;
    ``tmp_dir`` (local, same file system) holds it instead of the file's own folder."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        with replacing(path, run, tmp_dir=tmp_dir) as tmp:
            tmp.write_bytes(data)
    else:  # object stores make an upload visible all at once
        with fs.open_output_stream(path) as f:
            f.write(data)


def cache_root() -> Path:
    """This user's private cache of remote datasets (``$COLORJOB_CACHE``, else
    ``$XDG_CACHE_HOME/colorjob/data``, else ``~/.cache/colorjob/data``), readable by its owner only."""
    base = os.environ.get("COLORJOB_CACHE")
    root = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "colorjob" / "data"  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    return root


def safe_relative(rel: str, where: str) -> str:
    """``rel`` if it names a path inside its root (no absolute path, no ``..``); else an error."""
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(
            f"{where}: {rel!r} would leave its folder; refusing it (rename the object)"
        )
    return "/".join(parts)


def local_copy(uri: str) -> Path:
    """A local folder with the contents of ``uri``: the path itself, or this node's cached copy.

    The copy lives in the user's private cache (:func:`cache_root`) and is brought up to date
    with the remote listing on every call: files whose size or modification time changed are
    fetched again, files gone remotely are removed. Concurrent callers on one node (several
    trials) take turns.
    """
    if not is_uri(uri):
        return Path(uri)
    import fcntl
    import hashlib
    import json

    dest = cache_root() / hashlib.sha256(uri.encode()).hexdigest()[:16]
    fs, root = resolve(uri)
    with open(dest.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        except OSError as e:
            raise explain(uri, e) from None
        prefix = root.rstrip("/") + "/"
        remote = {
            safe_relative(i.path[len(prefix) :], uri): [i.size, i.mtime_ns or 0]
            for i in infos
            if i.type == pafs.FileType.File and i.path.startswith(prefix)
        }
        state = dest / ".colorjob-cache.json"
        known = json.loads(state.read_text()) if state.is_file() else {}
        dest.mkdir(exist_ok=True)
        for rel, info in remote.items():
            target = dest / rel
            if known.get(rel) == info and target.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with replacing(target, durable=False) as tmp:
                tmp.write_bytes(read_bytes(fs, join(root, rel)))
        for rel in set(known) - set(remote):
            (dest / rel).unlink(missing_ok=True)
        with replacing(state, durable=False) as tmp:
            tmp.write_text(json.dumps(remote))
    return dest


def upload_dir(src: str | Path, uri: str) -> None:
    """Copy a local folder to ``uri`` (replacing files of the same name)."""
    fs, root = resolve(uri)
    src = Path(src)
    for f in sorted(src.rglob("*")):
        if f.is_file():
            write_atomic(fs, join(root, f.relative_to(src).as_posix()), f.read_bytes())
