"""Appends to a records file the records of another that it does not hold yet.

Records computed elsewhere (a GPU session writes into a copy of `results/v2/runs.jsonl`)
come back by merging: every record of the source whose key (`KEY_FIELDS`) the
destination lacks is appended, in the source's order; nothing in the destination changes.
The same command merges the server map's and the privacy study's records
(`results/server_map/runs.jsonl.gz`, `results/privacy/runs.jsonl`).

  python -m mtsl_jax.comparison.merge_records SOURCE DESTINATION
"""

import pathlib
import sys

from mtsl_jax.comparison import records, v2_records

# The union of the studies' run identities: the comparison v2's; the server map's, which
# adds the cell (examples per client, clients); the privacy study's (profile, row, seed,
# and for FedAvg's row the inversion attack that scored it: a rescored record is new).
# A field a record lacks reads as None, so each study's records keep their own identity.
KEY_FIELDS = (*v2_records.KEY_FIELDS, "examples", "clients", "row", "attack")


def merge(source: pathlib.Path, destination: pathlib.Path) -> int:
  """Appends `source`'s new records to `destination`.

  Args:
    source: a records JSONL (e.g. a device's copy).
    destination: the records JSONL to extend (created if missing).

  Returns:
    The number of records appended.
  """
  out = records.ResultsFile(destination)
  have = {v2_records.key(r, KEY_FIELDS) for r in out.load()}
  new = []
  for record in records.ResultsFile(source).load():
    key = v2_records.key(record, KEY_FIELDS)
    if key not in have:
      have.add(key)
      new.append(record)
  out.append(new)
  return len(new)


def main(argv: list[str]) -> int:
  """`merge_records SOURCE DESTINATION`; prints how many records were appended."""
  if len(argv) != 3:
    print("usage: python -m mtsl_jax.comparison.merge_records SOURCE DESTINATION",
          file=sys.stderr)
    return 2
  source = pathlib.Path(argv[1])
  if not source.exists():
    print(f"error: SOURCE: no file {source}", file=sys.stderr)
    return 2
  print(f"appended {merge(source, pathlib.Path(argv[2]))} records to {argv[2]}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
