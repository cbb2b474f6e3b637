"""A run's working directory: checked before anything trains, and locked while in use.

`open_workdir(path)` refuses, with one line naming the path and what is wrong, a workdir
that cannot hold a run: an empty path, an existing file, a path under a file, a
directory that cannot be written (read-only file system, permissions), or a
`checkpoints` entry that is not a directory. It then takes an exclusive lock on
`<workdir>/.lock`, so one live run owns a workdir at a time: a second run on the same
workdir is refused naming the process that holds it. The lock is an advisory `flock`,
which the kernel drops when its process ends in any way (a crash, SIGKILL, a lost job), so
a lock left by a killed run is stale by construction and the next run takes it over; the
file's text (pid, host, start time) only serves the refusal message.
"""

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time
from typing import Iterator

from mtsl_jax import errors

WorkdirError = errors.WorkdirError  # defined in `errors.py`; public here too


def check_workdir(path: str | pathlib.Path) -> pathlib.Path:
  """Creates `path` if needed and checks that a run can write there.

  Args:
    path: the workdir.

  Returns:
    The workdir as an absolute path.

  Raises:
    WorkdirError: naming the path and the problem.
  """
  if str(path).strip() == "":
    raise WorkdirError("--workdir: must name a directory, got an empty string")
  workdir = pathlib.Path(path).absolute()
  # The checkpoint store (orbax over tensorstore) writes under a path with brackets but
  # cannot open it again: the run would save checkpoints it could never resume from, and
  # the restore error would blame the checkpoint. Refuse before anything is written.
  if any(c in str(workdir) for c in "[]"):
    raise WorkdirError(f"--workdir {workdir}: contains '[' or ']', which the checkpoint "
                       "store cannot read back; choose a path without brackets")
  for parent in [workdir, *workdir.parents]:
    if parent.exists() and not parent.is_dir():
      where = "is" if parent == workdir else f"lies under {parent}, which is"
      raise WorkdirError(f"--workdir {workdir} {where} a file, not a directory; "
                         "choose another --workdir")
    if parent.exists():
      break
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--workdir {workdir}: cannot create it ({os.strerror(e.errno or 0)}); "
                       "choose another --workdir") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir {workdir}: not writable; choose another --workdir")
  checkpoints = workdir / "checkpoints"
  if checkpoints.exists() and not checkpoints.is_dir():
    raise WorkdirError(f"--workdir {workdir}: {checkpoints} is a file, where checkpoints "
                       "are kept; move it away or choose another --workdir")
  return workdir


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
  """Holds the exclusive lock of `workdir` (one live run per workdir).

  Args:
    workdir: a checked workdir.

  Yields:
    Nothing; the lock is held until the block ends (or the process does).

  Raises:
    WorkdirError: another live process holds the lock, or the lock file cannot be made
      (a read-only file system).
  """
  path = workdir / ".lock"
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(f"--workdir {workdir}: cannot create its lock file "
                       f"({os.strerror(e.errno or 0)}); choose a writable --workdir") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise WorkdirError(f"--workdir {workdir}: cannot lock it ({os.strerror(e.errno)})") from e
      holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
      try:
        info = json.loads(holder)
        who = f"process {info['pid']} on {info['host']} (started {info['started']})"
      except (ValueError, KeyError, TypeError):
        who = "another process"
      raise WorkdirError(f"--workdir {workdir} is in use by {who}: one run per workdir; wait "
                         "for it to finish, stop it, or choose another --workdir") from None
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, me, 0)
    yield
  finally:
    os.close(fd)  # closing the descriptor releases the flock
