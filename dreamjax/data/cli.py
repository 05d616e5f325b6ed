"""``dreamjax data stats | convert | preview``.

  dreamjax data stats   --data-dir DIR --dataset NAME [--split all] [--out FILE]
      dataset_statistics.json ({NAME: {action: {mean, std, max, min, q01, q99, mask}, proprio: {...},
      num_transitions, num_trajectories}}) of a registered OXE dataset read from DIR/NAME/<version>/.
      The default split is "all", the split the reference computes statistics on.
  dreamjax data convert --data-dir DIR --dataset NAME --out ROOT [--version V] [--num-shards N] [--overwrite]
                        [--skip-corrupt]
      TFRecord shards → ArrayRecord in ROOT/NAME/<version>/ (random access).
  dreamjax data preview --data-dir DIR --dataset NAME [--split train] [--episodes 4] [--frames 8] [--out DIR]
      contact_sheet.png (frames per episode, each camera) and actions.png (action dims over time).
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("dreamjax")


def _dataset_dir(args):
    """(OXE config or None when the name is not registered, the RLDS version directory)."""
    from dreamjax.data.oxe.configs import OXE_DATASET_CONFIGS
    from dreamjax.data.rlds.reader import resolve_version_dir
    from dreamjax.data.vla_mixture import find_dataset_dir

    config = OXE_DATASET_CONFIGS.get(args.dataset)
    if config is None:  # not a registered OXE dataset: convert still works on its directory
        return None, resolve_version_dir(args.data_dir, args.dataset, getattr(args, "version", None))
    return config, find_dataset_dir(args.data_dir, config, getattr(args, "version", None))


def cmd_stats(args) -> int:
    from dreamjax.data.statistics import save_dataset_statistics
    from dreamjax.data.vla_mixture import compute_dataset_statistics

    config, path = _dataset_dir(args)
    if config is None:
        raise KeyError(f"{args.dataset!r} is not a registered OXE dataset (see dreamjax.data.oxe.configs)")
    entry = compute_dataset_statistics(path, config, split=args.split,
                                       on_bad_episode="skip" if args.skip_bad else "error")
    out = save_dataset_statistics(args.out, {args.dataset: entry})
    log.info("%s: %d transitions, %d trajectories", args.dataset, entry["num_transitions"],
             entry["num_trajectories"])
    print(out)
    return 0


def cmd_convert(args) -> int:
    from dreamjax.data.rlds.convert import convert_to_array_record

    _, path = _dataset_dir(args)
    out = convert_to_array_record(path, args.out, num_shards=args.num_shards, overwrite=args.overwrite,
                                  on_corrupt="skip" if args.skip_corrupt else "error")
    print(out)
    return 0


def cmd_preview(args) -> int:
    from dreamjax.data.preview import write_preview
    from dreamjax.data.rlds.reader import EpisodeSource, open_dataset
    from dreamjax.data.traj_transforms import standardize_episode

    config, path = _dataset_dir(args)
    if config is None:
        raise KeyError(f"{args.dataset!r} is not a registered OXE dataset (see dreamjax.data.oxe.configs)")
    source = EpisodeSource(open_dataset(path), args.split)
    views = tuple(v for v, key in config.image_obs_keys.items() if key is not None)
    if len(source):  # a configured view this dataset was recorded without (e.g. one camera of two) is left out
        views = tuple(v for v in views if _has_view(source[0], config, v, args.dataset))
    trajs = [standardize_episode(source[i], config, views, args.dataset) for i in range(min(args.episodes, len(source)))]
    paths = write_preview(trajs, args.out, frames_per_episode=args.frames)
    print(json.dumps([str(p) for p in paths]))
    return 0


def _has_view(episode, config, view: str, name: str) -> bool:
    from dreamjax.data.traj_transforms import EpisodeError, standardize_episode

    try:
        standardize_episode(episode, config, (view,), name)
    except EpisodeError as e:
        if e.reason == "missing_key" and config.image_obs_keys[view] in str(e):
            return False
        raise
    return True


def register(subparsers) -> None:
    """Add ``data`` with its subcommands to the ``dreamjax`` argument parser."""
    data = subparsers.add_parser("data", help="RLDS / Open X-Embodiment data: statistics, conversion, preview")
    sub = data.add_subparsers(dest="data_command", required=True)

    def common(p):
        p.add_argument("--data-dir", required=True, help="folder holding NAME/<version>/ RLDS directories")
        p.add_argument("--dataset", required=True, help="dataset name (registered OXE name, e.g. bridge_orig)")

    p = sub.add_parser("stats", help="write dataset_statistics.json for a registered dataset")
    common(p)
    p.add_argument("--split", default="all", help="split(s): all (reference), train, val, or a+b")
    p.add_argument("--out", default="dataset_statistics.json")
    p.add_argument("--skip-bad", action="store_true", help="skip (and log) episodes with non-finite values")
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("convert", help="TFRecord RLDS shards → ArrayRecord (random access)")
    common(p)
    p.add_argument("--out", required=True, help="output root; writes OUT/NAME/<version>/")
    p.add_argument("--version")
    p.add_argument("--num-shards", type=int)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--skip-corrupt", action="store_true", help="leave out damaged records (logged) instead of failing")
    p.set_defaults(fn=cmd_convert)

    p = sub.add_parser("preview", help="PNG contact sheet of frames per episode + action plot")
    common(p)
    p.add_argument("--split", default="train")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--out", default="outputs/preview")
    p.set_defaults(fn=cmd_preview)
