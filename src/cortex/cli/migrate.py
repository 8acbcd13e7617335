"""`cortex-migrate`: move an original cortex config or checkpoint to this project.

    cortex-migrate config OLD.yaml [-o NEW.yaml] [--config-dir DIR] [--numerics v1|fixed] [OVERRIDE ...]
    cortex-migrate checkpoint STATE_DICT CONFIG OUT_DIR

`config` composes OLD.yaml (resolving its defaults list against DIR, default its folder; Hydra overrides of the
original config may follow), writes a `cortex-train` config and prints one line per original key: mapped,
changed, unmapped, or action (a change the user must make before training). Train it with
`cortex-train --config-path <folder of NEW.yaml> --config-name <NEW>`.
`checkpoint` converts an original state dict (.pt / .pth loaded with weights_only=True, or .safetensors) and its
config into a `save_pretrained` directory that `AutoModel.from_pretrained` loads (after `import cortex`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from cortex.migration.config import NUMERICS, compose_v1_config, migrate_v1_config
from cortex.model.conversion import convert_v1_checkpoint, load_v1_state_dict


def migrate_config(args: argparse.Namespace) -> int:
    cfg = compose_v1_config(args.old, args.config_dir, args.overrides)
    result = migrate_v1_config(cfg, numerics=args.numerics)
    text = OmegaConf.to_yaml(OmegaConf.create(result.config))
    header = (
        f"# Migrated by cortex-migrate from {args.old}; train with cortex-train (see docs/migrating.md).\n"
    )
    if args.output:
        Path(args.output).write_text(header + text)
    else:
        sys.stdout.write(header + text)
    for entry in result.report:
        sys.stderr.write(f"{entry}\n")
    actions = result.entries("action")
    if actions:
        sys.stderr.write(f"{len(actions)} change(s) to make before training: the [action] lines above\n")
    return 0


def migrate_checkpoint(args: argparse.Namespace) -> int:
    state_dict = load_v1_state_dict(args.state_dict)
    config = compose_v1_config(args.config)
    model = convert_v1_checkpoint(state_dict, config)
    model.save_pretrained(args.out_dir)
    sys.stderr.write(f"wrote {args.out_dir} ({sum(p.numel() for p in model.parameters())} parameters)\n")
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="cortex-migrate", description=__doc__.split("\n\n")[0])
    commands = main.add_subparsers(dest="command", required=True)
    config = commands.add_parser("config", help="original training config -> cortex-train config")
    config.add_argument("old", help="original config YAML (composed, or a primary config with defaults)")
    config.add_argument("-o", "--output", help="where to write the new config (default: stdout)")
    config.add_argument(
        "--config-dir", help="folder the defaults list resolves against (default: OLD's folder)"
    )
    config.add_argument(
        "--numerics", choices=NUMERICS, default="v1", help="keep the original's layer numerics"
    )
    config.add_argument("overrides", nargs="*", help="Hydra overrides of the original config (key=value)")
    config.set_defaults(func=migrate_config)
    checkpoint = commands.add_parser("checkpoint", help="original state dict + config -> save_pretrained dir")
    checkpoint.add_argument("state_dict", help=".pt/.pth (torch.load weights_only) or .safetensors")
    checkpoint.add_argument("config", help="the original config saved with the checkpoint")
    checkpoint.add_argument("out_dir", help="output directory (save_pretrained)")
    checkpoint.set_defaults(func=migrate_checkpoint)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:
        sys.stderr.write(f"cortex-migrate: error: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
