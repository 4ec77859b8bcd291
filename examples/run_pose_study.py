"""The pose study (every method over a grid, 3 seeds, grids vmapped): ``python examples/run_pose_study.py --help``."""

import argparse
import sys

from pose.study import STUDY_PRESETS, run_study


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="study", choices=sorted(STUDY_PRESETS))
    ap.add_argument("--out", required=True, help="output folder (results.json, study.md, figures)")
    ap.add_argument("--data-dir", default=None, help="TFDS data folder (default OUT/data)")
    ap.add_argument("--unconstrained-from", default=None,
                    help="an earlier pose run of the same base preset whose unconstrained model to reuse")
    ap.add_argument("--families", nargs="+", default=None, help="run only these method families")
    ap.add_argument("--merge", nargs="+", default=[], metavar="DIR",
                    help="first copy in the finished runs of the same study run elsewhere (other families)")
    ap.add_argument("--no-projection", action="store_true",
                    help="skip evaluating the final models with the output-projection layer")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite study.md and the figures from OUT/results.json")
    args = ap.parse_args(argv)
    if args.report_only:
        from harness import read_json
        from pose import study_report
        from pathlib import Path
        out = Path(args.out)
        study_report.write_report(read_json(out / "results.json"), out, figures=not args.no_figures)
        return 0
    res = run_study(args.preset, args.out, data_dir=args.data_dir,
                    unconstrained_from=args.unconstrained_from, families=args.families,
                    progress=not args.no_progress, figures=not args.no_figures,
                    project=not args.no_projection, merge=args.merge)
    return 0 if res.get("complete") else 1


if __name__ == "__main__":
    sys.exit(main())
