"""How long ``packer verify`` takes next to the conversion it checks, side by side in one process, same data.

    python data_samples/make_samples.py --full --output /tmp/reference_full   # 99,388 rows, about 133M tokens
    python benchmarks/bench_verify.py --data /tmp/reference_full [--repeat 3]

Times (medians of ``--repeat`` runs, after one warm-up so numba's cache and the page cache are warm for both):
``pack`` (pack_dataset), ``verify`` (checksums and format invariants), ``verify --input`` (everything, including
the token-by-token comparison with the input), and the checksum-free variants to show what hashing costs.
Prints each as seconds and as a ratio to ``pack``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packer.convert import PackConfig, pack_dataset  # noqa: E402
from packer.input import Columns, has_column, open_input  # noqa: E402
from packer.verify import verify_packed  # noqa: E402

from _common import median_time  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="tokenized input (default data_samples/reference_full, made on first use)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if args.data is None:
        from _common import full_reference_set

        args.data = str(full_reference_set())
    elif not Path(args.data).exists():
        print(f"{args.data} is missing: run python data_samples/make_samples.py --full --output {args.data}")
        return 2
    columns = Columns(labels="labels" if has_column([args.data], "labels") else None)
    config = PackConfig(columns=columns)
    work = Path(tempfile.mkdtemp(prefix="bench_verify_"))
    out = work / "packed"
    try:
        def pack():
            pack_dataset(args.data, out, config=config, overwrite=True, progress=False)

        def pack_verified():
            pack_dataset(args.data, out, config=config, overwrite=True, progress=False, verify=True)

        t_pack = median_time(pack, repeat=args.repeat)
        report = verify_packed(out, inputs=[args.data])
        assert report.ok, report.format()
        rows = {
            "pack": t_pack,
            "verify": median_time(lambda: verify_packed(out), repeat=args.repeat),
            "verify, no checksums": median_time(lambda: verify_packed(out, checksums=False), repeat=args.repeat),
            "verify --input": median_time(lambda: verify_packed(out, inputs=[args.data]), repeat=args.repeat),
            "verify --input, no checksums": median_time(
                lambda: verify_packed(out, inputs=[args.data], checksums=False), repeat=args.repeat),
            "input opened once (pack --verify reuses it)": median_time(
                lambda: verify_packed(out, inputs=open_input([args.data], columns=columns)), repeat=args.repeat),
            "pack --verify": median_time(pack_verified, repeat=args.repeat),
        }
        print(f"{args.data}: {report.input_rows:,} rows -> {report.packs:,} packs, {report.sequences:,} sequences, "
              f"{report.tokens:,} tokens; medians of {args.repeat}")
        for name, t in rows.items():
            print(f"  {name:<45} {t:7.2f} s   {t / t_pack:5.2f} x pack")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
