"""Capacity at saturation: each family's peak, its state, and the peaks against the baseline's
(hand-made rows: the numbers are set, so every figure is known)."""

import math

from scipy import stats as scipy_stats

from extmem.experiments.saturation import (
    SATURATION_GROWTH,
    gain_per_added_param,
    peak_key,
    peak_rows,
    saturation_state,
    saturation_table,
)


def _stat(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
           if len(values) > 1 else 0.0)
    return {"mean": mean, "std": std, "values": values}


def _row(group: str, facts: int, stored: list[float], core: int = 100, total: int = 1000,
         flops: float = 1e9) -> dict:
    return {"variant": f"{group}-f{facts}", "group": group,
            "capacity": {"facts": facts, "bits_offered": 5.0 * facts},
            "params": {"core": core, "total": total},
            "stored_bits": _stat(stored),
            "stored_bits_per_core_param": _stat([s / core for s in stored]),
            "stored_bits_per_param": _stat([s / total for s in stored]),
            "stored_bits_per_core_flop": _stat([s / flops for s in stored])}


def _results(rows: list[dict], baseline: str) -> dict:
    return {"sweep": "cap", "baseline": baseline, "variants": rows}


def test_state_of_each_curve_shape():
    past = [_row("d", 10, [40.0]), _row("d", 30, [100.0]), _row("d", 90, [25.0])]
    assert saturation_state(past) == "past its peak (x0.25 of it at 90 facts)"
    flat = [_row("d", 10, [40.0]), _row("d", 30, [100.0]), _row("d", 90, [105.0])]
    assert saturation_state(flat) == "saturated (x1.05 over 30 facts)"
    rising = [_row("m", 10, [50.0]), _row("m", 30, [150.0])]
    assert saturation_state(rising) == "still growing (x3.00 over 10 facts)"
    at_threshold = [_row("m", 10, [100.0]), _row("m", 30, [100.0 * SATURATION_GROWTH])]
    assert saturation_state(at_threshold).startswith("still growing")
    assert saturation_state([_row("m", 10, [50.0])]) == "one corpus size"
    nothing = [_row("m", 10, [0.0]), _row("m", 30, [0.0])]
    assert saturation_state(nothing) == "stores nothing at any corpus size"


def test_peak_is_the_most_stored_not_the_largest_corpus():
    rows = [_row("d", 10, [40.0, 42.0]), _row("d", 30, [100.0, 90.0]), _row("d", 90, [25.0, 27.0]),
            _row("m", 10, [50.0, 50.0])]
    peaks = peak_rows(_results(rows, "d-f30"))
    assert peaks["d"]["capacity"]["facts"] == 30 and peaks["m"]["capacity"]["facts"] == 10
    # a row without the storage meter is no candidate
    del rows[1]["stored_bits"]
    assert peak_rows(_results(rows, "d-f30"))["d"]["capacity"]["facts"] == 10


def test_table_rows_and_peaks_against_the_baseline_family():
    dense = [_row("dense", 10, [40.0, 44.0, 42.0]), _row("dense", 30, [100.0, 90.0, 95.0]),
             _row("dense", 90, [25.0, 30.0, 20.0])]
    memory = [_row("mem", 10, [50.0, 50.0, 49.0], total=10_000),
              _row("mem", 30, [148.0, 150.0, 152.0], total=10_000)]
    lines = saturation_table(_results(dense + memory, baseline="dense-f10"))
    header = next(line for line in lines if line.startswith("| model |"))
    assert "| 10 facts | 30 facts | 90 facts |" in header
    dense_line = next(line for line in lines if line.startswith("| dense | "))
    # stored bits at each corpus with its share of the bits offered (5 bits per fact)
    assert "| 42 (84%) | 95 (63%) | 25 (6%) |" in dense_line
    low, high = scipy_stats.t.interval(0.95, 2, loc=95.0, scale=5.0 / math.sqrt(3))
    assert f"95 ± 5 [{low:,.0f}, {high:,.0f}] (30 facts)" in dense_line
    assert "past its peak (x0.26 of it at 90 facts)" in dense_line
    mem_line = next(line for line in lines if line.startswith("| mem | "))
    assert "| 50 (99%) | 150 (100%) | - |" in mem_line and "still growing" in mem_line
    # the baseline's family is dense (its peak at 30 facts); mem's peak against it, Welch
    versus = next(line for line in lines if line.startswith("| mem | ") and "seeds 3 / 3" in line)
    welch = scipy_stats.ttest_ind([148.0, 150.0, 152.0], [100.0, 90.0, 95.0], equal_var=False)
    w_low, w_high = welch.confidence_interval(0.95)
    assert versus.split(" | ")[1] == f"+55 [{w_low:+.3g}, {w_high:+.3g}], x1.58 (seeds 3 / 3)"
    per_param = versus.split(" | ")[3]
    assert per_param.startswith(f"{150.0 / 10_000 - 95.0 / 1000:+.3g}") and "x0.16" in per_param
    assert not any(line.startswith("| dense | ") and "seeds" in line for line in lines)
    assert versus.split(" | ")[4:8] == ["-"] * 4   # no floor measured: no comparison
    # what each of the 9,000 parameters mem adds over dense bought, on stored bits (no floor)
    gain = f"{(150.0 - 95.0) / 9_000:+.3g} [{w_low / 9_000:+.3g}, {w_high / 9_000:+.3g}]"
    assert versus.split(" | ")[8] == f"{gain} (stored bits, 9,000 added) |"
    assert "| stored bits | 95 ± 5 [" in dense_line      # the peak is taken on stored bits


def test_above_the_floor_at_the_peak():
    dense = [_row("dense", 10, [40.0, 44.0]), _row("dense", 30, [100.0, 90.0])]
    memory = [_row("mem", 10, [150.0, 152.0])]
    for row, above in zip(dense + memory, ([10.0, 12.0], [30.0, 20.0], [149.0, 151.0]),
                          strict=True):
        row["stored_bits_above_floor"] = _stat(above)
    lines = saturation_table(_results(dense + memory, baseline="dense-f30"))
    dense_line = next(line for line in lines if line.startswith("| dense | "))
    # every row has the floor: the figures and the peak are the bits above it
    assert "| 11 (22%) | 25 (17%) | above the floor | 25 ± 7 [" in dense_line
    assert "(30 facts) | 95 ± 7 [" in dense_line          # stored bits at the peak
    versus = next(line for line in lines if line.startswith("| mem | ") and "seeds" in line)
    welch = scipy_stats.ttest_ind([149.0, 151.0], [30.0, 20.0], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert versus.split(" | ")[4] == f"+125 [{low:+.3g}, {high:+.3g}], x6.00 (seeds 2 / 2)"
    # mem has as many parameters as dense: it adds none, so no gain per added parameter
    assert versus.split(" | ")[8] == "- |"


def test_peak_is_taken_above_the_floor_when_every_row_has_it():
    # stored bits peak at 90 facts, but most of them there are the floor
    rows = [_row("d", 10, [40.0]), _row("d", 30, [100.0]), _row("d", 90, [300.0])]
    for row, above in zip(rows, ([30.0], [80.0], [20.0]), strict=True):
        row["stored_bits_above_floor"] = _stat(above)
    assert peak_key(rows) == "stored_bits_above_floor"
    assert peak_rows(_results(rows, "d-f10"))["d"]["capacity"]["facts"] == 30
    assert saturation_state(rows) == "past its peak (x0.25 of it at 90 facts)"
    # one run without the floor: the family falls back to stored bits
    del rows[0]["stored_bits_above_floor"]
    assert peak_key(rows) == "stored_bits"
    assert peak_rows(_results(rows, "d-f10"))["d"]["capacity"]["facts"] == 90
    assert saturation_state(rows).startswith("still growing (x3.00")


def test_no_families_no_table():
    ungrouped = _row("d", 10, [1.0])
    del ungrouped["group"]
    assert saturation_table(_results([ungrouped], baseline="d-f10")) == []
    # a tuning grid's groups are families of settings on one corpus: no capacity table
    assert saturation_table({**_results([_row("d", 10, [1.0])], "d-f10"), "tuning": {}}) == []


def test_each_model_against_the_best_reference_on_each_figure():
    # two references: "wide" stores more bits, "narrow" more per parameter in all
    narrow = [_row("narrow", 10, [40.0, 44.0]), _row("narrow", 30, [60.0, 64.0])]
    wide = [_row("wide", 10, [90.0, 100.0], total=10_000), _row("wide", 30, [120.0, 110.0],
                                                                total=10_000)]
    memory = [_row("mem", 10, [300.0, 310.0], total=5_000)]
    results = {**_results(narrow + wide + memory, baseline="narrow-f10"),
               "references": ["narrow", "wide"]}
    lines = saturation_table(results)
    start = next(i for i, line in enumerate(lines) if "best reference model" in line)
    assert "(references: `narrow`, `wide`;" in lines[start]
    end = next(i for i, line in enumerate(lines[start + 2:], start + 2) if not line)
    table = lines[start + 2:end]   # header, rule, then one row per model but the references
    assert len(table) == 3 and table[2].startswith("| mem | ")
    mem = table[2]
    cells = mem.removesuffix(" |").split(" | ")[1:]
    # stored bits: wide's peak (30 facts, 115) is the higher one
    welch = scipy_stats.ttest_ind([300.0, 310.0], [120.0, 110.0], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert cells[0] == f"+190 [{low:+.3g}, {high:+.3g}], x2.65 (seeds 2 / 2) vs wide"
    # per parameter in all: narrow's peak (62 / 1,000) beats wide's (115 / 10,000)
    assert cells[2].startswith(f"{305.0 / 5_000 - 62.0 / 1000:+.3g} [") and \
        cells[2].endswith("x0.98 (seeds 2 / 2) vs narrow")
    assert cells[3:] == ["-"] * 4        # no floor measured anywhere: nothing to compare
    # without references, no such table
    del results["references"]
    assert not any("best reference model" in line for line in saturation_table(results))


def test_references_must_be_groups_of_the_sweep(tiny_config, capsys):
    from tests.cli_helpers import error_line
    path = tiny_config.parent / "refs.toml"
    path.write_text('name = "refs"\nbase = "tiny.toml"\nseeds = [0]\nsteps = 2\n'
                    'references = ["dense", "wide"]\n\n[[variants]]\nname = "d-e6"\n'
                    'group = "dense"\nset = ["model.memories=[]"]\n')
    assert error_line(capsys, "compare", str(path)) == (
        "error: sweep.references: ['wide'] are not groups of this sweep's variants; "
        "allowed: ['dense']")
    path.write_text(path.read_text().replace('"dense", "wide"', '"dense", "dense"'))
    assert error_line(capsys, "compare", str(path)) == (
        "error: sweep.references: ['dense', 'dense'] lists a group twice")


def test_gain_per_added_parameter_is_taken_above_the_floor_when_both_have_it():
    base, wide = _row("d", 10, [100.0, 110.0], total=1_000), _row("w", 10, [400.0, 420.0],
                                                                   total=3_000)
    base["stored_bits_above_floor"], wide["stored_bits_above_floor"] = _stat([60.0, 70.0]), \
        _stat([260.0, 290.0])
    low, high = scipy_stats.ttest_ind([260.0, 290.0], [60.0, 70.0],
                                      equal_var=False).confidence_interval(0.95)
    assert gain_per_added_param(wide, base) == (
        f"{(275.0 - 65.0) / 2_000:+.3g} [{low / 2_000:+.3g}, {high / 2_000:+.3g}] "
        "(above the floor, 2,000 added)")
    del base["stored_bits_above_floor"]            # one side without the floor: stored bits
    assert gain_per_added_param(wide, base).startswith(f"{(410.0 - 105.0) / 2_000:+.3g} [")
    assert gain_per_added_param(base, wide) == "-"  # fewer parameters: nothing added


def test_per_training_flop_counts_the_lookups():
    # mem's lookups double its FLOPs in all at the same core FLOPs (1e9): its lead per FLOP in
    # all is half its lead per core FLOP
    dense = [_row("dense", 10, [40.0, 44.0]), _row("dense", 30, [100.0, 90.0])]
    memory = [_row("mem", 10, [270.0, 300.0], total=10_000)]
    for row, flops in zip(dense + memory, (1e9, 1e9, 2e9), strict=True):
        above = [s - 5.0 for s in row["stored_bits"]["values"]]
        row["stored_bits_above_floor"] = _stat(above)
        row["stored_bits_above_floor_per_core_flop"] = _stat([a / 1e9 for a in above])
        row["stored_bits_above_floor_per_flop"] = _stat([a / flops for a in above])
    lines = saturation_table(_results(dense + memory, baseline="dense-f30"))
    header = next(line for line in lines if line.startswith("| model | params"))
    assert header.endswith("| peak / training FLOP of the core | peak / training FLOP, lookups "
                           "included | state |")
    # mem's peak: (265, 295) bits above the floor, per core FLOP and per FLOP in all
    mem_line = next(line for line in lines if line.startswith("| mem | 100 / 10,000"))
    assert mem_line.split(" | ")[-3].startswith("2.8e-07 ± ")
    assert mem_line.split(" | ")[-2].startswith("1.4e-07 ± ")
    # against dense's peak (95, 85 above the floor at 30 facts, 1e9 FLOPs in all), Welch
    versus = next(line for line in lines if line.startswith("| mem | ") and "seeds" in line)
    per_core, per_all = versus.split(" | ")[5], versus.split(" | ")[7]
    welch = scipy_stats.ttest_ind([2.65e-7, 2.95e-7], [9.5e-8, 8.5e-8], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert per_core == f"{2.8e-7 - 9e-8:+.3g} [{low:+.3g}, {high:+.3g}], x3.11 (seeds 2 / 2)"
    welch = scipy_stats.ttest_ind([1.325e-7, 1.475e-7], [9.5e-8, 8.5e-8], equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert per_all == f"{1.4e-7 - 9e-8:+.3g} [{low:+.3g}, {high:+.3g}], x1.56 (seeds 2 / 2)"
