"""The `extmem` command line: thin parsing, one function per subcommand, clear errors.

Every user mistake ends with one line `error: ...` and exit status 2; `--json` prints exactly
one JSON object on stdout (progress and tables go to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from extmem.errors import ExtmemError


def _print_json(data: dict) -> None:
    from extmem.train.run_dir import _clean
    print(json.dumps(_clean(data), indent=2))


def _summary_table(results: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value")
    for key in ("steps", "val_loss", "val_ppl", "val_bpb", "facts_recalled"):
        if key in results and results[key] is not None:
            value = results[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    params = results.get("params", {})
    if params:
        table.add_row("params core / embeddings", f"{params['core']:,} / {params['embeddings']:,}")
        table.add_row("params memory tables / other",
                      f"{params['memory_tables']:,} / {params['memory_other']:,}")
    for name, usage in results.get("memory_usage", {}).items():
        table.add_row(f"{name} usage (eval)", f"{usage['usage']:.3f} of {usage['slots']:,} slots")
        table.add_row(f"{name} windowed usage (train)", f"{usage['train_windowed_usage']:.3f}")
        table.add_row(f"{name} KL to uniform / Gini",
                      f"{usage['kl_uniform_weighted']:.3f} / {usage['gini']:.3f}")
    if "run_dir" in results:
        table.add_row("run directory", results["run_dir"])
    Console().print(table)


def cmd_train(args: argparse.Namespace) -> int:
    from extmem.config import apply_overrides, from_dict, read_toml
    from extmem.errors import ConfigError
    from extmem.train.config import RunConfig
    from extmem.train.loop import TrainOptions, train
    from extmem.train.run_dir import CONFIG_FILE, fresh_run_dir, load_run_config

    if args.config is None and not (args.resume and args.out):
        raise ConfigError("train: give a CONFIG.toml, or --resume --out RUN_DIR to continue a run")
    if args.config is not None:
        cfg = from_dict(RunConfig, apply_overrides(read_toml(args.config), args.set))
        default_dir = Path("runs") / Path(args.config).stem
    else:
        cfg = load_run_config(Path(args.out), args.set)
        default_dir = Path(args.out)
    if args.out:
        run_dir = Path(args.out)
        if (run_dir / CONFIG_FILE).exists() and not args.resume:
            raise ConfigError(f"--out {run_dir}: already holds a run; pass --resume to continue "
                              "it, or choose another --out")
    else:
        run_dir = default_dir if args.resume else fresh_run_dir(default_dir)
    results = train(cfg, run_dir, TrainOptions(resume=args.resume, quiet=args.quiet))
    if args.json:
        _print_json(results)
    else:
        _summary_table(results, f"trained {run_dir}")
    return 0


def _load_trained(run_dir: Path, overrides: list[str], checkpoint: str | None):
    """Config, data and model restored from a run directory's checkpoint."""
    from extmem.errors import CheckpointError
    from extmem.train.checkpoint import latest_checkpoint, load_checkpoint
    from extmem.train.run_dir import load_run_config
    from extmem.train.session import build_model, load_run_data, resolve_device, with_vocab

    cfg = load_run_config(run_dir, overrides)
    path = run_dir / "checkpoints" / checkpoint if checkpoint else latest_checkpoint(run_dir)
    if path is None or not path.is_dir():
        raise CheckpointError(f"{run_dir}: no complete checkpoint found "
                              f"({'no ' + checkpoint if checkpoint else 'train it first'})")
    data = load_run_data(cfg, run_dir)
    cfg = with_vocab(cfg, data.lm.vocab_size)
    model = build_model(cfg, resolve_device(cfg.train.device))
    loaded = load_checkpoint(path, model)
    return cfg, data, model, loaded


def cmd_eval(args: argparse.Namespace) -> int:
    from extmem.data import Corpus, build_lm_data
    from extmem.data.files import load_files
    from extmem.evaluate import evaluate

    run_dir = Path(args.run_dir)
    cfg, data, model, loaded = _load_trained(run_dir, args.set, args.checkpoint)
    lm, probes = data.lm, data.corpus.probes
    if args.data:  # evaluate every document of these files (no split), no fact probes
        docs = load_files(args.data, cfg.data.text_field)
        lm = build_lm_data(Corpus(name="files", train_docs=docs, val_docs=docs), data.tokenizer,
                           cfg.data)
        probes = []
    tc = cfg.train
    results = {"run_dir": str(run_dir), "checkpoint": loaded.path.name, "steps": loaded.step,
               **evaluate(model, lm, probes, tc.eval_batch_size, tc.eval_tokens, tc.mask_prob,
                          tc.usage_window)}
    if args.json:
        _print_json(results)
    else:
        _summary_table(results, f"evaluated {run_dir} at {loaded.path.name}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from extmem.generate import sample

    _, data, model, _ = _load_trained(Path(args.run_dir), args.set, args.checkpoint)
    prompt_ids = data.tokenizer.encode(args.prompt).ids
    new = sample(model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k,
                 args.seed, stop_id=data.lm.eos_id if args.stop_at_eos else None)
    text = data.tokenizer.decode(new)
    if args.json:
        _print_json({"prompt": args.prompt, "completion": text, "tokens": len(new)})
    else:
        print(args.prompt + text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from extmem.bench import PkmBenchConfig, run_pkm_bench, write_markdown
    from extmem.config import apply_overrides, from_dict

    cfg = from_dict(PkmBenchConfig, apply_overrides({}, args.set))
    result = run_pkm_bench(cfg, progress=not args.json)
    if not args.no_write:
        command = "extmem bench pkm" + "".join(f" --set {s}" for s in args.set)
        write_markdown(result, Path(args.doc), command)
    if args.json:
        _print_json(result)
    else:
        from rich.console import Console
        from rich.table import Table
        table = Table(title="bench pkm (ms, median over repeats)")
        for column in ("model", "infer", "train step", "params"):
            table.add_column(column)
        for name in ("memory", "ffn"):
            row = result[name]
            table.add_row(name, f"{row['infer_ms']['median']:.1f}",
                          f"{row['train_ms']['median']:.1f}", f"{row['params']:,}")
        Console().print(table)
        if not args.no_write:
            print(f"written to {args.doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extmem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set train.steps=100 (repeatable)")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser("train", help="train (or resume) a model from a TOML config")
    p.add_argument("config", nargs="?", help="CONFIG.toml (optional with --resume --out RUN_DIR)")
    p.add_argument("--out", help="run directory (default: runs/<config name>, never overwritten)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in the run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run")
    p.add_argument("run_dir")
    p.add_argument("--data", help="evaluate on these text/JSONL files (path or glob) instead")
    p.add_argument("--checkpoint", help="checkpoint directory name, e.g. step-100 (default: newest)")
    common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a trained causal LM")
    p.add_argument("run_dir")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 = no limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-at-eos", action="store_true", help="stop at the end-of-text token")
    p.add_argument("--checkpoint", help="checkpoint directory name (default: newest)")
    common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("bench", help="performance benchmarks")
    p.add_argument("name", choices=["pkm"], help="pkm: memory layer vs dense FFN")
    p.add_argument("--doc", default="docs/benchmarks.md", help="Markdown file to update")
    p.add_argument("--no-write", action="store_true", help="do not update the Markdown file")
    common(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from extmem.train.loop import TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ExtmemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
