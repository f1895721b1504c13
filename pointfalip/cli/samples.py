"""`samples`: every input the README's Usage names, written into a folder (`pointfalip.samples`)."""
from __future__ import annotations

from .options import subcommand


def _samples_args(p):
    p.add_argument("folder", metavar="DIR", help="where to write them (created if absent; a new or empty folder, or "
                                                  "one that holds samples pointfalip wrote)")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that holds other files too (files of the same names are replaced)")


def _print_samples(result: dict) -> None:
    rows = result["files"]
    width = max(len(r["path"]) for r in rows)
    print(f"wrote {len(rows)} samples into {result['folder']}/ (made by pointfalip from primitives; no real data):")
    for r in rows:
        print(f"  {r['path']:<{width}}  {r['what']}")
    print(f"next: cd {result['folder']}  and run the README's Usage lines (offline: add --pretrained none)")


@subcommand("samples", "write every input the README's Usage uses into a folder (made by the project itself)",
            _samples_args, _print_samples)
def run_samples(args) -> dict:
    from ..samples import write_samples

    written = write_samples(args.folder, force=args.force)
    return {"folder": str(args.folder).rstrip("/"), "files": [{"path": s.path, "what": s.what} for s in written]}
