"""The `extmem` command line: thin parsing, one function per subcommand, clear errors.

Every user mistake ends with one line `error: ...` and exit status 2; `--json` prints exactly
one JSON object on stdout (progress and tables go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from extmem.errors import ConfigError, ExtmemError


def _int_list(text: str) -> list[int]:
    """argparse type: "1,10,100" -> [1, 10, 100], each an integer >= 1."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed; use integers >= 1 separated by commas, e.g. 1,10,100")
    return values


def _print_json(data: dict) -> None:
    from extmem.run.run_dir import json_safe
    print(json.dumps(json_safe(data), indent=2))


def _summary_table(results: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from extmem.console import print_table

    table = Table(title=title, show_header=False)
    table.add_column("metric")
    table.add_column("value")
    for key in ("steps", "val_loss", "val_ppl", "val_bpb", "facts_recalled",
                "recall_train_phrasing", "stored_bits"):
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
    print_table(Console(), table)


# How CONFIG / SWEEP arguments resolve (extmem.builtin_configs), for --help
NAMES_HELP = ("a path if it ends in .toml or names an existing file (a path wins), else the "
              "name of a built-in config, nested with / (extmem configs lists them)")


def _read_run_config(arg: str, overrides: list[str]):
    """CONFIG (a path or a built-in name) + `--set` overrides -> (RunConfig, the file)."""
    from extmem.builtin_configs import resolve
    from extmem.config import apply_overrides, from_dict, read_toml
    from extmem.run.config import RunConfig, require_sections

    path = resolve(arg, "run")
    raw = read_toml(path)
    sections = list(raw)
    cfg = from_dict(RunConfig, apply_overrides(raw, overrides))  # unknown keys, bad values first
    require_sections(sections, str(path))
    return cfg, path


def cmd_train(args: argparse.Namespace) -> int:
    from extmem.distributed.context import init_distributed
    from extmem.errors import ConfigError
    from extmem.run.run_dir import CONFIG_FILE, fresh_run_dir, load_run_config
    from extmem.run.session import resolve_device
    from extmem.train.loop import TrainOptions, train

    if args.config is None and not (args.resume and args.out):
        raise ConfigError("train: give a CONFIG (a .toml file or a built-in name, e.g. "
                          "quickstart), or --resume --out RUN_DIR to continue a run")
    if args.config is not None:
        cfg, path = _read_run_config(args.config, args.set)
        default_dir = Path("runs") / path.stem
    else:
        cfg = load_run_config(Path(args.out), args.set)
        default_dir = Path(args.out)
    ctx = init_distributed(resolve_device(cfg.train.device))  # under torchrun: join the group
    if args.out:
        run_dir = Path(args.out)
        if (run_dir / CONFIG_FILE).exists() and not args.resume:
            raise ConfigError(f"--out {run_dir}: already holds a run; pass --resume to continue "
                              "it, or choose another --out")
    else:
        run_dir = default_dir if args.resume else fresh_run_dir(default_dir)
    run_dir = ctx.from_main(run_dir)  # every rank writes the run rank 0 chose
    try:
        results = train(cfg, run_dir, TrainOptions(resume=args.resume, quiet=args.quiet, ctx=ctx,
                                                   force=args.force))
    finally:
        ctx.close()
    if not ctx.is_main:
        return 0
    if args.json:
        _print_json(results)
    else:
        _summary_table(results, f"trained {run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from extmem.data.files import load_files
    from extmem.run.evaluate import evaluate_trained
    from extmem.run.fill_results import fill_run
    from extmem.run.session import load_trained

    run_dir = Path(args.run_dir)
    if args.fill_results:
        added, results = fill_run(run_dir, args.set, args.checkpoint, args.data)
        results["added_to_results"] = added
        if not args.json:
            print(f"{run_dir / 'results.json'}: added {', '.join(added)}" if added else
                  f"{run_dir / 'results.json'}: had every figure; nothing added")
    else:
        run = load_trained(run_dir, args.set, args.checkpoint)
        docs = load_files(args.data, run.cfg.data.text_field) if args.data else None
        results = {"run_dir": str(run_dir), "checkpoint": run.checkpoint.name,
                   "steps": run.step, **evaluate_trained(run, docs)}
    if args.json:
        _print_json(results)
    else:
        _summary_table(results, f"evaluated {run_dir} at {results['checkpoint']}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from extmem.generate import check_sampling, sample
    from extmem.run.session import load_trained

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.seed)  # before loading
    run = load_trained(Path(args.run_dir), args.set, args.checkpoint)
    data, model = run.data, run.model
    prompt_ids = data.tokenizer.encode(args.prompt).ids
    new = sample(model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k,
                 args.seed, stop_id=data.lm.eos_id if args.stop_at_eos else None)
    text = data.tokenizer.decode(new)
    if args.json:
        _print_json({"prompt": args.prompt, "completion": text, "tokens": len(new)})
    else:
        print(args.prompt + text)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from extmem.console import print_table
    from extmem.experiments import load_sweep, run_sweep
    from extmem.experiments.report import rich_table, write_report
    from extmem.experiments.tuning import tuning_lines

    sweep = load_sweep(args.sweep, args.set, steps=args.steps, tokens=args.tokens,
                       exposures=args.exposures, baseline=args.baseline, evals=args.evals)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.cfg.name
    if args.status:  # where each run stands and the time left; train nothing
        return _print_sweep_status(sweep, out, args)
    problems: list[str] = []  # runs --fill-results could not fill
    if args.fill_results:  # add what finished runs lack from their final checkpoints
        from extmem.experiments.fill import fill_sweep
        problems = fill_sweep(sweep, out, args.only, args.seed,
                              Console(stderr=True, quiet=args.quiet))
    if args.report_only or args.fill_results:  # summarise what has finished; train nothing
        from extmem.experiments.compare import summarize
        results = summarize(sweep, out, partial=True)
    else:
        results = run_sweep(sweep, out, quiet=args.quiet, only=args.only, seeds=args.seed,
                            reuse=[Path(d) for d in args.reuse or []])
        if results is None:  # a piece (--only, or runs left to other workers) without its baseline
            reason = f"the baseline {sweep.cfg.baseline!r} has no finished run in {out}"
            if args.json:
                _print_json({"sweep": sweep.cfg.name, "out": str(out), "report": None,
                             "reason": reason})
            else:
                print(f"trained; no report yet: {reason}")
            return 0
    command = " ".join(["extmem compare", args.sweep, *_compare_flags(args)])
    write_report(results, out, command)
    if args.json:
        _print_json({**results, "not_filled": problems} if problems else results)
    else:
        print_table(Console(), rich_table(results))
        for warning in results["warnings"]:
            print(f"warning: {warning}")
        for problem in problems:
            print(f"not filled: {problem}")
        for line in tuning_lines(results):
            print(line)
        plots = sorted(p.name for p in out.glob("*.png"))
        print(f"report: {out / 'results.md'} (plots: {', '.join(plots) or 'none'})")
    return 0


def _print_sweep_status(sweep, out: Path, args: argparse.Namespace) -> int:
    from rich.console import Console

    from extmem.console import print_table
    from extmem.experiments.sweep_status import (
        status_lines,
        status_summary,
        status_table,
        sweep_status,
    )

    rows = sweep_status(sweep, out, only=args.only, seeds=args.seed,
                        reuse=[Path(d) for d in args.reuse or []])
    summary = status_summary(rows)
    if args.json:
        _print_json({"sweep": sweep.cfg.name, "out": str(out), **summary})
        return 0
    print_table(Console(), status_table(rows, f"{sweep.cfg.name} in {out}"))
    for line in status_lines(summary):
        print(line)
    return 0


def _compare_flags(args: argparse.Namespace) -> list[str]:
    """The flags of an `extmem compare` command that shape its report (for the report's
    command line): budget, baseline, the pieces trained, reused directories, overrides."""
    flags = [f"--{name} {value}" for name in ("steps", "tokens", "exposures", "evals",
                                              "baseline", "out")
             if (value := getattr(args, name))]
    flags += [f"--only '{pattern}'" for pattern in args.only or []]
    flags += [f"--seed {seed}" for seed in args.seed or []]
    flags += [f"--reuse {directory}" for directory in args.reuse or []]
    return flags + [f"--set {s}" for s in args.set]


def cmd_configs(args: argparse.Namespace) -> int:
    from extmem.builtin_configs import builtin_configs, find

    if args.configs_command == "show":
        sys.stdout.write(find(args.name).path.read_text(encoding="utf-8"))
        return 0
    configs = builtin_configs().values()
    if args.json:
        _print_json({"configs": [{"name": c.name, "kind": c.kind, "description": c.description,
                                  "path": str(c.path)} for c in configs]})
        return 0
    width = max(len(c.name) for c in configs)
    for kind, heading in (("run", "run configs: extmem train NAME"),
                          ("sweep", "sweeps: extmem compare NAME (sweeps/ may be left out)")):
        print(heading)
        for c in configs:
            if c.kind == kind:
                print(f"  {c.name:<{width}}  {c.description}")
    print("start a config of your own from one: extmem configs show NAME > my.toml")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from extmem.bench.suite import bench_command, summary

    result = bench_command(args.name, args.set, Path(args.out) if args.out else None,
                           Path(args.doc) if args.doc else None, progress=not args.json)
    if args.json:
        _print_json(result)
    else:
        print(summary(result))
        print(f"results: {Path(result['out_dir']) / 'results.md'} (and results.json)")
        if args.doc:
            print(f"updated the {result['doc_section']} section of {args.doc}")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from extmem.train.augment_pretrained import augment_pretrained, is_hf_checkpoint
    from extmem.train.augment_run import augment_run, parse_layers

    source = Path(args.source)
    memory = Path(args.memory) if args.memory else None
    layers = parse_layers(args.layers) if args.layers else None
    if is_hf_checkpoint(source):
        from extmem.hf import require_transformers
        require_transformers("extmem augment HF_DIR")
        report = augment_pretrained(source, Path(args.out), memory, layers, args.placement,
                                    args.set, force=args.force, no_memory=args.no_memory)
    elif args.no_memory:
        raise ConfigError("--no-memory: only for a Hugging Face checkpoint directory (the "
                          "continued-pretraining control); an extmem run continues with "
                          "extmem train --resume")
    else:
        report = augment_run(source, Path(args.out), memory, layers, args.placement, args.set,
                             force=args.force)
    if args.json:
        _print_json(report)
    elif "created_head" in report:
        _print_pretrained_augment(report)
    else:
        print(f"augmented {report['source_checkpoint']} -> {report['run_dir']} "
              f"(+{report['new_params']:,} params, {len(report['dropped_tensors'])} FFN tensors "
              f"dropped)\nval loss before training: dense {report['val_loss_dense']:.6f}, "
              f"augmented {report['val_loss_augmented']:.6f}\n"
              f"continue with: extmem train --resume --out {report['run_dir']}")
    return 0


def _print_pretrained_augment(report: dict) -> None:
    if report["note"]:
        print(f"note: {report['note']}")
    print(f"{report['source_checkpoint']} -> {report['run_dir']} (init: {report['init']}, "
          f"+{report['new_params']:,} memory params, {len(report['memories'])} memories)\n"
          f"val loss before training: without memory {report['val_loss_dense']:.6f}, "
          f"with {report['val_loss_augmented']:.6f}\n"
          f"continue with: extmem train --resume --out {report['run_dir']}")


def cmd_usage(args: argparse.Namespace) -> int:
    from rich.console import Console

    from extmem.console import print_table
    from extmem.report.usage import usage_report, usage_tables

    report = usage_report(Path(args.run_dir), args.checkpoint, args.set, plots=not args.no_plots,
                          eval_sizes=args.eval_tokens, windows=args.windows)
    console = Console(stderr=args.json)
    for table in usage_tables(report):
        print_table(console, table)
    for path in report.get("plots", []):
        console.print(f"wrote {path}")
    if args.json:
        _print_json(report)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from extmem.finetune import finetune

    results = finetune(Path(args.run_dir), args.task, args.mode, args.set, args.checkpoint,
                       quiet=args.quiet or args.json)
    if args.json:
        _print_json(results)
    else:
        print(f"{results['task']} ({results['mode']}, {results['steps']} steps, "
              f"{results['n_train']:,} train / {results['n_eval']:,} held out, "
              f"{results['n_classes']} classes): accuracy {results['accuracy']:.4f}, "
              f"macro-F1 {results['macro_f1']:.4f} (majority class "
              f"{results['majority_accuracy']:.4f}) -> {results['out_dir']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from extmem.errors import ConfigError
    from extmem.hf import require_transformers

    if args.format != "hf":
        raise ConfigError(f"--format: {args.format!r} is not supported; choose hf")
    require_transformers("export --format hf")
    from extmem.hf.export import export_run
    from extmem.hf.export_pretrained import export_pretrained_run
    from extmem.run.run_dir import load_run_config

    if load_run_config(Path(args.run_dir)).model.pretrained:
        result = export_pretrained_run(Path(args.run_dir), Path(args.out), args.checkpoint)
    else:
        result = export_run(Path(args.run_dir), Path(args.out), args.checkpoint, args.license)
    if args.json:
        _print_json(result)
    else:
        auto = result.get("auto_class") or ("AutoModelForCausalLM"
                                             if result["architecture"].endswith("CausalLM")
                                             else "AutoModelForMaskedLM")
        print(f"exported {result['run_dir']} ({result['checkpoint']}) -> {result['out']}\n"
              f"load with: import extmem; transformers.{auto}.from_pretrained({result['out']!r})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from extmem import __version__

    parser = argparse.ArgumentParser(prog="extmem", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"extmem {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set train.steps=100 (repeatable)")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser("train", help="train (or resume) a model from a TOML config")
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help=f"the run config: {NAMES_HELP}, e.g. quickstart, design/token-add "
                        "(optional with --resume --out RUN_DIR)")
    p.add_argument("--out", help="run directory (default: runs/<config name>, never overwritten)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in the run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar or tables")
    p.add_argument("--force", action="store_true",
                   help="skip the check that the memory tables (with optimizer state and "
                        "gradients) fit in the memory available")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run")
    p.add_argument("run_dir")
    p.add_argument("--data", help="evaluate on these text/JSONL files (path or glob) instead")
    p.add_argument("--checkpoint", help="checkpoint directory name, e.g. step-100 (default: newest)")
    p.add_argument("--fill-results", action="store_true",
                   help="add to the finished run's results.json the figures it lacks (measured "
                        "by a newer extmem), from its final checkpoint; figures it has are kept")
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

    p = sub.add_parser("compare", help="run a sweep (variants x seeds) and compare the variants")
    p.add_argument("sweep", metavar="SWEEP",
                   help=f"the sweep file: {NAMES_HELP}; a name is looked up under sweeps/ "
                        "first, e.g. quickstart = sweeps/quickstart")
    p.add_argument("--out", help="sweep directory (default: runs/sweeps/<sweep name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--steps", type=int, help="budget: train every run for N steps (replaces "
                                             "the sweep's steps / tokens)")
    p.add_argument("--tokens", type=int, help="budget: train every run on N tokens")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--report-only", action="store_true",
                       help="train nothing: report the runs that have finished (a sweep "
                            "running elsewhere, or stopped part-way), the rest listed as "
                            "pending")
    shown.add_argument("--fill-results", action="store_true",
                       help="train nothing: add to every finished run's results.json the "
                            "figures it lacks (measured by a newer extmem), from its final "
                            "checkpoint (with --only / --seed: those runs), then report")
    shown.add_argument("--status", action="store_true",
                       help="train nothing: list every run as finished, training (by which "
                            "process), stopped at a checkpoint or not started (with --reuse: "
                            "or reusable, copied rather than trained), its steps done and the "
                            "training time it still needs (with --only: those runs)")
    p.add_argument("--exposures", type=int, metavar="E",
                   help="budget: train every run until each training token was seen E times "
                        "(steps = ceil(E x training tokens / tokens per step))")
    p.add_argument("--evals", type=int, metavar="N",
                   help="evaluate and checkpoint every run N times over its own budget "
                        "(every ceil(steps / N) steps; replaces the configs' eval_every and "
                        "checkpoint_every): one curve density for budgets of any length")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="train only the variants whose names match (fnmatch, e.g. 'dense-*'; "
                        "repeatable) and report every finished run, the rest as pending")
    p.add_argument("--seed", action="append", type=int, metavar="N",
                   help="train only this one of the sweep's seeds (repeatable; with --only: "
                        "those variants at those seeds) and report every finished run")
    p.add_argument("--baseline", metavar="VARIANT",
                   help="compare the variants with this one instead of the sweep's baseline "
                        "(for a piece run with --only that leaves the sweep's baseline out)")
    p.add_argument("--reuse", action="append", metavar="DIR",
                   help="copy in the finished runs of sweep directory DIR whose config is the "
                        "same as a run of this sweep instead of training it (repeatable)")
    common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("configs", help="list the built-in configs, or show one to start a "
                                       "config of your own from",
                       description="List the configs that ship with extmem (run configs for "
                                   "train, sweeps for compare) with one line about each, or "
                                   "print one: extmem configs show quickstart > my.toml")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    shows = p.add_subparsers(dest="configs_command", metavar="[show NAME]")
    show = shows.add_parser("show", help="print a built-in config's TOML (NAME as listed; "
                                         "sweeps/NAME for a sweep whose name is also a run config)")
    show.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("bench", help="performance benchmarks (docs/benchmarks.md)")
    p.add_argument("name", choices=["pkm", "capacity", "model", "altup", "kernels", "host-table",
                                    "engram-prefetch", "scaling", "optimizer"],
                   help="pkm: our PKM vs product-key-memory, gather floor and dense FFN; "
                        "capacity: latency vs table rows per lookup; model: training tokens/s "
                        "dense vs memory models; altup: AltUp vs dense-d / dense-2d step; "
                        "kernels: each numba kernel vs its portable path; host-table: resident "
                        "memory of an mmap host table; engram-prefetch: Engram step time with "
                        "an mmap table, prefetched or not, vs in memory; scaling: tokens/s on "
                        "1, 2, 4 torchrun processes; optimizer: AdamW for-loop vs fused on "
                        "memory models")
    p.add_argument("--out", metavar="DIR",
                   help="where results.md, results.json and plots go (default: a fresh "
                        "runs/bench/NAME, then NAME-2, NAME-3, ...)")
    doc = p.add_mutually_exclusive_group()
    doc.add_argument("--doc", metavar="FILE.md",
                     help="also replace this benchmark's section of FILE.md, e.g. "
                          "docs/benchmarks.md (plots are copied beside it); default: no doc")
    doc.add_argument("--no-write", action="store_true",
                     help="update no Markdown doc (the default; kept for old commands)")
    common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("augment", help="add memory to a trained (dense) model or a local "
                                       "Hugging Face checkpoint: a new run to continue with "
                                       "train --resume")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                   help="run directory (newest checkpoint), RUN/checkpoints/step-N, or a local "
                        "Hugging Face checkpoint directory (BERT/RoBERTa encoders, GPT-2, "
                        "Llama-family decoders)")
    p.add_argument("--no-memory", action="store_true",
                   help="Hugging Face checkpoint only: the run without memory (the "
                        "continued-pretraining control)")
    p.add_argument("--memory", metavar="MEMORY.toml",
                   help="memory config: one memory's fields, or a run config's "
                        "[[model.memories]] (default: product keys scaled to the model)")
    p.add_argument("--layers", help="comma-separated layer indices, e.g. 2,4 (overrides the TOML)")
    p.add_argument("--placement", metavar="PLACEMENT",
                   help="parallel_ffn: beside the FFN (ResM), replace_ffn: instead of it, "
                        "input: at the start of the layer (default: the TOML's, else "
                        "parallel_ffn)")
    p.add_argument("--out", required=True, help="the new run directory (must not exist)")
    p.add_argument("--force", action="store_true",
                   help="skip the check that the new memory tables fit in the memory available")
    common(p)
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser("usage", help="memory usage per layer: table + PNG plots in RUN_DIR/usage")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", help="checkpoint directory name (default: newest)")
    p.add_argument("--no-plots", action="store_true", help="only the table / JSON")
    p.add_argument("--eval-tokens", type=_int_list, default=[], metavar="N[,N...]",
                   help="also Lample's usage over the first N validation tokens, for each N")
    p.add_argument("--windows", type=_int_list, default=[], metavar="W[,W...]",
                   help="also windowed usage over the last W training steps, for each W")
    common(p)
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser("finetune", help="classification finetuning of a trained run")
    p.add_argument("run_dir")
    p.add_argument("--task", required=True,
                   help="wordnet-supersense, gcide-pos, facts-attribute, a .csv/.jsonl file with "
                        "text,label, or a Hugging Face dataset name")
    p.add_argument("--mode", choices=["full", "frozen-base", "memory-only"], default="full",
                   help="what trains besides the head (default: full)")
    p.add_argument("--checkpoint", help="checkpoint directory name (default: newest)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    common(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("export", help="export a run as a Hugging Face transformers directory")
    p.add_argument("run_dir")
    p.add_argument("--format", default="hf", help="hf: config.json + model.safetensors + "
                                                   "tokenizer, for AutoModel*.from_pretrained")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--checkpoint", help="checkpoint directory name, e.g. step-100 (default: newest)")
    p.add_argument("--license", help="license of the weights for the model card README.md, e.g. "
                                     "apache-2.0 (default: none recorded)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    from extmem.allocator import enabled_by_environment, reuse_freed_memory
    from extmem.run.provenance import invoked_as
    from extmem.train.loop import TrainingInterrupted

    args = build_parser().parse_args(argv)
    if enabled_by_environment():
        reuse_freed_memory()  # large step buffers reused, not page-faulted anew (allocator.py)
    try:  # run directories record this command line (provenance.json)
        with invoked_as(sys.argv if argv is None else ["extmem", *argv]):
            return args.func(args)
    except ExtmemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `extmem configs | head`: the reader left (Python docs, signal)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the pipe


if __name__ == "__main__":
    sys.exit(main())
