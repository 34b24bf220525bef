"""``caspl report``: trees of Dassl-style logs -> tables, flags and files."""
import csv
import statistics
import sys

import pytest

from caspl_plugin import cli
from caspl_plugin.report import build_report, discover_runs, parse_log, read_run, read_zeroshot_csv

EPOCHS = 5
PNG = b"\x89PNG\r\n\x1a\n"


def result_block(accuracy, total=1000):
    correct = round(accuracy * total / 100)
    return [
        "=> result",
        f"* total: {total:,}",
        f"* correct: {correct:,}",
        f"* accuracy: {accuracy:.1f}%",
        f"* error: {100 - accuracy:.1f}%",
        f"* macro_f1: {accuracy - 0.7:.1f}%",
    ]


def train_log(accuracy, run_dir="output/run", *, epochs=EPOCHS, stop_at=None, best_epoch=None, val=(60.0, 70.0)):
    """The lines Dassl's SimpleTrainer prints; ``best_epoch`` = TEST.FINAL_MODEL best_val whose val
    accuracy improves until that epoch; ``stop_at`` = the run died during that epoch."""
    lines = [
        "Setting fixed seed: 1",
        "Loading trainer: PromptSRC",
        "Loading dataset: OxfordPets",
        "Building model",
        "Loading evaluator: Classification",
        "No checkpoint found, train from scratch",
        f"Initialize tensorboard (log_dir={run_dir}/tensorboard)",
    ]
    for epoch in range(1, (stop_at or epochs) + 1):
        for batch in (5, 10):
            lines.append(
                f"epoch [{epoch}/{epochs}] batch [{batch}/10] time 0.121 (0.150) data 0.001 (0.011) "
                f"loss 1.2345 (1.3021) acc 50.0000 (47.5000) lr {2.5e-3 / epoch:.4e} eta 0:00:{epochs - epoch:02d}"
            )
        if epoch == stop_at:
            return "\n".join(lines) + "\n"
        if best_epoch is not None:
            lines += ["Evaluate on the *val* set"] + result_block(val[epoch <= best_epoch], total=64)
            if epoch <= best_epoch:
                lines.append(f"Checkpoint saved to {run_dir}/prompt_learner/model-best.pth.tar")
        if epoch == epochs:
            lines.append(f"Checkpoint saved to {run_dir}/prompt_learner/model.pth.tar-{epoch}")
    lines.append("Finish training")
    if best_epoch is not None:
        lines += ["Deploy the model with the best val performance",
                  f"Load {run_dir}/prompt_learner/model-best.pth.tar to prompt_learner "
                  f"(epoch={best_epoch}, val_result=70.0)"]
    else:
        lines.append("Deploy the last-epoch model")
    lines += ["Evaluate on the *test* set"] + result_block(accuracy) + ["Elapsed: 0:01:02"]
    return "\n".join(lines) + "\n"


def eval_log(accuracy, model_dir="output/run"):
    return "\n".join([
        "Loading trainer: PromptSRC",
        "Building model",
        f'Loading weights to prompt_learner from "{model_dir}/prompt_learner/model.pth.tar-{EPOCHS}" (epoch = {EPOCHS})',
        "Evaluate on the *test* set",
        *result_block(accuracy),
        "=> per-class result",
        "* class: 0 (abyssinian)\ttotal: 50\tcorrect: 45\tacc: 90.0%",
        "* average: 90.0%",
    ]) + "\n"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# base2new accuracies fed into the tree: trainer -> dataset -> (base per seed, novel per seed)
B2N = {
    "PromptSRC": {"oxford_pets": ([95.1, 95.5, 94.9], [97.0, 97.4, 96.8]),
                  "eurosat": ([92.3, 91.7, 93.0], [73.5, 70.2, 75.9])},
    "CasPL_PromptSRC": {"oxford_pets": ([95.7, 95.9, 96.0], [97.9, 98.1, 97.6]),
                        "eurosat": ([96.2, 95.8, 96.5], [83.1, 80.4, 85.0])},
}
CFG = "vit_b16_c2_ep20_batch4_4+4ctx"


def b2n_dir(root, split, dataset, trainer, seed):
    return root / "base2new" / split / dataset / "shots_16" / trainer / CFG / f"seed{seed}"


def make_base2new(root):
    for trainer, per_dataset in B2N.items():
        for dataset, (bases, novels) in per_dataset.items():
            for seed, (base, novel) in enumerate(zip(bases, novels), start=1):
                write(b2n_dir(root, "train_base", dataset, trainer, seed) / "log.txt", train_log(base))
                write(b2n_dir(root, "test_new", dataset, trainer, seed) / "log.txt", eval_log(novel))
    # a re-run: Dassl keeps log.txt and timestamps the newer logs; the newest one died
    rerun = b2n_dir(root, "train_base", "eurosat", "CasPL_PromptSRC", 2)
    write(rerun / "log.txt", train_log(11.0))
    write(rerun / "log.txt-2024-05-01-10-00-00", train_log(B2N["CasPL_PromptSRC"]["eurosat"][0][1]))
    write(rerun / "log.txt-2024-05-02-09-00-00", train_log(0.0, stop_at=2))


def expected_b2n(trainer):
    rows = {}
    for dataset, (bases, novels) in B2N[trainer].items():
        base, novel = statistics.fmean(bases), statistics.fmean(novels)
        rows[dataset] = dict(base=base, base_std=statistics.pstdev(bases), novel=novel,
                             novel_std=statistics.pstdev(novels), hm=2 * base * novel / (base + novel))
    base = statistics.fmean(r["base"] for r in rows.values())
    novel = statistics.fmean(r["novel"] for r in rows.values())
    rows["Average"] = dict(base=base, novel=novel, hm=2 * base * novel / (base + novel))
    return rows


def tables_by_name(report):
    return {table.name: table for table in report.tables}


def as_dicts(table):
    return {row[0]: dict(zip(table.columns, row)) for row in table.rows}


def test_parse_log_end_signals():
    done = parse_log(train_log(81.3))
    assert (done.status, done.accuracy, done.total, done.correct, done.eval_only) == ("ok", 81.3, 1000, 813, False)
    assert (done.last_epoch, done.max_epoch, done.best_epoch) == (EPOCHS, EPOCHS, None)
    evaluated = parse_log(eval_log(66.6))  # the per-class lines must not be read as the accuracy
    assert (evaluated.status, evaluated.accuracy, evaluated.eval_only) == ("ok", 66.6, True)
    # best_val: the val results before "Finish training" are not the test accuracy
    best = parse_log(train_log(77.7, best_epoch=3))
    assert (best.status, best.accuracy, best.best_epoch) == ("ok", 77.7, 3)
    died = parse_log(train_log(50.0, stop_at=3, best_epoch=5))
    assert died.status == "unfinished" and died.accuracy is None and "epoch 3/5" in died.reason
    no_test = parse_log(train_log(50.0).split("Deploy")[0])
    assert no_test.status == "no-test" and "Finish training" in no_test.reason
    assert parse_log("Building model\n").status == "unfinished"
    assert parse_log("Finish training\n* accuracy: -%\n").status == "no-test"  # a malformed number is not an accuracy


def test_run_folder_logs(tmp_path):
    assert read_run(tmp_path, ["log.txt"])[2].startswith("cannot read log.txt")
    write(tmp_path / "log.txt", train_log(70.0))
    write(tmp_path / "log.txt-2023-12-31-23-59-59", train_log(71.0))
    write(tmp_path / "log.txt-2024-01-01-00-00-00", eval_log(72.0).replace("=> result", "=> per-split"))
    names = ["log.txt", "log.txt-2024-01-01-00-00-00", "log.txt-2023-12-31-23-59-59"]
    name, summary, problem, note = read_run(tmp_path, names)
    assert (name, summary.accuracy, problem) == ("log.txt-2023-12-31-23-59-59", 71.0, "")
    assert note == "newer log(s) log.txt-2024-01-01-00-00-00 incomplete; used log.txt-2023-12-31-23-59-59"


def test_base2new_tables_and_comparison(tmp_path):
    make_base2new(tmp_path)
    runs = discover_runs(tmp_path)
    assert len(runs) == 2 * 2 * 3 * 2 and all(run.status == "ok" for run in runs)
    rerun = next(r for r in runs if r.path.endswith("train_base/eurosat/shots_16/CasPL_PromptSRC/" + CFG + "/seed2"))
    assert rerun.log == "log.txt-2024-05-01-10-00-00" and "log.txt-2024-05-02-09-00-00" in rerun.note

    report = build_report(runs)
    assert report.flags == []
    tables = tables_by_name(report)
    for trainer in B2N:
        table = next(t for t in report.tables if t.kind == "base2new" and t.title.startswith(f"Base-to-novel: {trainer} ("))
        got, expected = as_dicts(table), expected_b2n(trainer)
        assert list(got) == ["oxford_pets", "eurosat", "Average"]  # the paper's dataset order
        for dataset, values in expected.items():
            for column, value in values.items():
                assert got[dataset][column] == pytest.approx(value, abs=1e-9), (trainer, dataset, column)
        assert got["oxford_pets"]["base_seeds"] == got["eurosat"]["novel_seeds"] == 3
    # HM of the averages, not the average of per-dataset HMs
    average = expected_b2n("PromptSRC")["Average"]
    assert average["hm"] != pytest.approx(statistics.fmean(expected_b2n("PromptSRC")[d]["hm"] for d in B2N["PromptSRC"]))

    overview = as_dicts(tables["base2new_hm_overview"])
    assert overview["Average"]["CasPL_PromptSRC"] == pytest.approx(expected_b2n("CasPL_PromptSRC")["Average"]["hm"])
    delta = as_dicts(tables["base2new_delta_CasPL_PromptSRC_vs_PromptSRC"])
    ours, theirs = expected_b2n("CasPL_PromptSRC"), expected_b2n("PromptSRC")
    for dataset in ("oxford_pets", "eurosat", "Average"):
        for metric in ("base", "novel", "hm"):
            assert delta[dataset][f"{metric}_baseline"] == pytest.approx(theirs[dataset][metric])
            assert delta[dataset][f"{metric}_delta"] == pytest.approx(ours[dataset][metric] - theirs[dataset][metric])
    # --baseline: every other trainer against the named one (CasPL_X vs X is always there, once)
    assert [t.name for t in build_report(runs, baselines=["PromptSRC"]).tables].count(
        "base2new_delta_CasPL_PromptSRC_vs_PromptSRC") == 1
    assert "base2new_delta_PromptSRC_vs_CasPL_PromptSRC" in tables_by_name(build_report(runs, baselines=["CasPL_PromptSRC"]))


def test_flags(tmp_path):
    make_base2new(tmp_path)
    trainer = "PromptSRC"
    # unfinished: the newest (only) log of a seed stops mid-training -> that cell also misses seed 3
    write(b2n_dir(tmp_path, "train_base", "oxford_pets", trainer, 3) / "log.txt", train_log(0.0, stop_at=3))
    # epoch-1 best: validation never improved after the first epoch
    write(b2n_dir(tmp_path, "train_base", "eurosat", trainer, 1) / "log.txt", train_log(92.3, best_epoch=1))
    # below zero-shot: a ZeroshotCLIP run in the tree on the new classes of EuroSAT (the fed novel accuracies are 70-76)
    write(b2n_dir(tmp_path, "test_new", "eurosat", "ZeroshotCLIP", 1) / "log.txt", eval_log(72.0))
    # missing seed: a third dataset with seeds 1 and 2 only
    for seed in (1, 2):
        write(b2n_dir(tmp_path, "train_base", "dtd", trainer, seed) / "log.txt", train_log(80.0))
        write(b2n_dir(tmp_path, "test_new", "dtd", trainer, seed) / "log.txt", eval_log(60.0))
    # unparsed: a log in no known layout
    write(tmp_path / "scratch" / "log.txt", train_log(10.0))

    report = build_report(discover_runs(tmp_path))
    prefix = f"base2new/{{}}/{{}}/shots_16/{trainer}/{CFG}"
    expected = {
        ("unfinished", prefix.format("train_base", "oxford_pets") + "/seed3"),
        ("epoch-1", prefix.format("train_base", "eurosat") + "/seed1"),
        ("below-zero-shot", prefix.format("test_new", "eurosat") + "/seed2"),  # 70.2 < 72.0; CasPL's 80.4+ are not
        ("missing-seed", prefix.format("train_base", "oxford_pets")),
        ("missing-seed", prefix.format("train_base", "dtd")),
        ("missing-seed", prefix.format("test_new", "dtd")),
        ("unparsed", "scratch"),
    }
    assert {(f.kind, f.where) for f in report.flags} == expected
    missing = {f.where: f.detail for f in report.flags if f.kind == "missing-seed"}
    assert "missing 3" in missing[prefix.format("train_base", "oxford_pets")]
    assert "expected at least 3" in missing[prefix.format("test_new", "dtd")]
    # the unfinished seed is left out of the mean, never mixed in
    table = as_dicts(next(t for t in report.tables if t.title.startswith(f"Base-to-novel: {trainer} (")))
    assert table["oxford_pets"]["base"] == pytest.approx(statistics.fmean(B2N[trainer]["oxford_pets"][0][:2]))
    assert table["oxford_pets"]["base_seeds"] == 2
    assert report.summary().startswith(f"{len(report.runs)} runs (")

    # a zero-shot CSV (all classes, same backbone) and fewer expected seeds
    zs = tmp_path / "zs.csv"
    zs.write_text("dataset,split,backbone,accuracy\nOxfordPets,all,vit_b16,95.6\nOxfordPets,base,rn50,99.0\n")
    report = build_report(discover_runs(tmp_path), expect_seeds=2, zeroshot=read_zeroshot_csv(zs))
    below = {f.where for f in report.flags if f.kind == "below-zero-shot"}
    # base runs fall back to the all-classes row of their backbone (95.6): PromptSRC's 95.1 and 95.5 (seed 3 is
    # unfinished); the rn50 base row does not apply to vit_b16 runs; the tree's EuroSAT reference still does
    pets = prefix.format("train_base", "oxford_pets")
    assert below == {pets + "/seed1", pets + "/seed2", prefix.format("test_new", "eurosat") + "/seed2"}
    missing = {f.where: f.detail for f in report.flags if f.kind == "missing-seed"}
    assert len(missing) == 3 and not any("expected at least" in detail for detail in missing.values())


def test_zeroshot_csv_errors(tmp_path):
    bad = tmp_path / "zs.csv"
    bad.write_text("dataset,accuracy\neurosat,high\n")
    with pytest.raises(ValueError, match="line 2: accuracy 'high'"):
        read_zeroshot_csv(bad)
    bad.write_text("name,acc\neurosat,40\n")
    with pytest.raises(ValueError, match="'dataset' and 'accuracy'"):
        read_zeroshot_csv(bad)


FEW = {"caltech101": {1: [90.1, 91.3], 4: [93.0, 93.4], 16: [95.5, 95.1]},
       "dtd": {1: [52.0, 55.2], 4: [63.3, 64.1], 16: [72.6, 71.8]}}


def make_few_shot(root):
    """CasPL_PromptSRC over FEW (two seeds each) and one CoOp run (one seed) in CoOp's own layout."""
    for dataset, per_shots in FEW.items():
        for shots, accuracies in per_shots.items():
            for seed, accuracy in enumerate(accuracies, start=1):
                run = root / "few_shot" / dataset / f"shots_{shots}" / "CasPL_PromptSRC" / "few_shot_cfg" / f"seed{seed}"
                write(run / "log.txt", train_log(accuracy))
    # CoOp's own layout: <dataset>/<trainer>/<cfg>_<K>shots/<variant>/seed<S>
    write(root / "coop_out" / "dtd" / "CoOp" / "rn50_ep50_2shots" / "nctx16_cscFalse_ctpend" / "seed1" / "log.txt",
          train_log(45.0))


def test_few_shot_table(tmp_path):
    make_few_shot(tmp_path)
    report = build_report(discover_runs(tmp_path), expect_seeds=1)
    assert report.flags == []
    tables = [t for t in report.tables if t.kind == "few_shot"]
    coop = next(t for t in tables if "CoOp" in t.title)
    assert "coop_out" in coop.title and as_dicts(coop)["dtd"]["2_shots"] == 45.0
    table = as_dicts(next(t for t in tables if "CasPL" in t.title))
    for shots in (1, 4, 16):
        for dataset, per_shots in FEW.items():
            assert table[dataset][f"{shots}_shots"] == pytest.approx(statistics.fmean(per_shots[shots]))
            assert table[dataset][f"{shots}_shots_std"] == pytest.approx(statistics.pstdev(per_shots[shots]))
        expected = statistics.fmean(statistics.fmean(FEW[d][shots]) for d in FEW)
        assert table["Average"][f"{shots}_shots"] == pytest.approx(expected)


XD = {"imagenet": [71.2, 71.0], "caltech101": [94.0, 93.6], "eurosat": [48.1, 50.3],
      "imagenetv2": [64.3, 64.5], "imagenet_r": [77.9, 77.5], "ucf101": [68.0, 67.2]}


def make_cross_dataset(root, accuracies=XD):
    """PromptSRC trained on ImageNet and tested on ``accuracies``' targets; CoOp tested on DTD (two seeds)."""
    for dataset, values in accuracies.items():
        for seed, accuracy in enumerate(values, start=1):
            if dataset == "imagenet":
                run = root / "xd" / "train" / "imagenet" / "shots_16" / "PromptSRC" / "xd_cfg" / f"seed{seed}"
                write(run / "log.txt", train_log(accuracy))
            else:
                run = root / "xd" / "test" / dataset / "shots_16" / "PromptSRC" / "xd_cfg" / f"seed{seed}"
                write(run / "log.txt", eval_log(accuracy))
    for seed in (1, 2):  # CoOp's evaluation layout
        write(root / "evaluation" / "CoOp" / "vit_b16_16shots" / "dtd" / f"seed{seed}" / "log.txt", eval_log(44.0 + seed))


def test_cross_dataset_table(tmp_path):
    accuracies = XD
    make_cross_dataset(tmp_path)
    report = build_report(discover_runs(tmp_path), expect_seeds=2)
    assert report.flags == []
    coop = next(t for t in report.tables if t.kind == "xd" and t.title.startswith("Cross-dataset / domain generalisation: CoOp"))
    assert coop.rows[0][:3] == ["cross-dataset", "dtd", 45.5]
    table = next(t for t in report.tables if t.kind == "xd" and "PromptSRC" in t.title)
    rows = {row[1]: dict(zip(table.columns, row)) for row in table.rows}
    mean = {d: statistics.fmean(v) for d, v in accuracies.items()}
    assert rows["imagenet"]["role"] == "source" and rows["imagenet"]["accuracy"] == pytest.approx(mean["imagenet"])
    assert rows["eurosat"]["accuracy_std"] == pytest.approx(statistics.pstdev(accuracies["eurosat"]))
    assert rows["Average (cross-dataset)"]["accuracy"] == pytest.approx(
        statistics.fmean(mean[d] for d in ("caltech101", "eurosat", "ucf101")))
    assert rows["Average (domain-generalisation)"]["accuracy"] == pytest.approx(
        statistics.fmean(mean[d] for d in ("imagenetv2", "imagenet_r")))
    assert any("3 of 10" in note for note in table.notes) and any("2 of 4" in note for note in table.notes)


def test_cli_writes_files(tmp_path, capsys):
    make_base2new(tmp_path)
    write(tmp_path / "boosting" / "eurosat" / "boost_cfg" / "seed1" / "log.txt", train_log(61.5))
    out = tmp_path / "tables"
    assert cli.main(["report", str(tmp_path), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "Base-to-novel: CasPL_PromptSRC" in stdout and "Phase 1" in stdout and "Flagged: 0" in stdout
    assert "95.17 ± 0.25" in stdout  # PromptSRC oxford_pets base: mean and population std of 95.1, 95.5, 94.9

    report = build_report(discover_runs(tmp_path))
    for table in report.tables:
        assert (out / f"{table.name}.csv").is_file() and (out / f"{table.name}.md").read_text().startswith("## ")
    assert (out / "report.md").is_file() and not list(out.glob(".*tmp"))
    charts = sorted(out.glob("*.png"))  # each trainer's table, the HM overview, CasPL_PromptSRC vs PromptSRC
    assert {p.stem for p in charts} == {t.name for t in report.tables if t.kind.startswith("base2new")}
    assert len(charts) == 4 and all(p.read_bytes()[:8] == PNG for p in charts)
    # the CSV round-trips
    table = next(t for t in report.tables if t.kind == "base2new")
    with open(out / f"{table.name}.csv", newline="") as file:
        read = list(csv.DictReader(file))
    assert [row["dataset"] for row in read] == table.column("dataset")
    for row, original in zip(read, table.rows):
        for column, value in zip(table.columns[1:], original[1:]):
            assert (row[column] == "") if value is None else float(row[column]) == pytest.approx(value, abs=1e-6)


def test_cli_without_matplotlib(tmp_path, capsys, monkeypatch):
    make_base2new(tmp_path)
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    assert cli.main(["report", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "matplotlib" in line]
    assert len(warnings) == 1 and "skipped" in warnings[0]
    assert (tmp_path / "report" / "runs.csv").is_file() and not list((tmp_path / "report").glob("*.png"))


def test_cli_no_runs(tmp_path, capsys):
    (tmp_path / "base2new" / "train_base").mkdir(parents=True)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "base2new/{train_base,test_new}" in err and "few_shot/" in err
    assert cli.main(["report", str(tmp_path / "absent")]) == 2


# ---- charts: each layout's PNG, its data read back from the drawn figure equals the table --------

def chart_of(report, name):
    from caspl_plugin.report.charts import report_charts

    return next(chart for chart in report_charts(report) if chart.name == name)


def same(drawn, value):
    """A drawn number against a table cell (a missing cell draws NaN)."""
    return drawn != drawn if value is None else drawn == pytest.approx(value, abs=1e-9)


def bars(axes):
    """Series label -> (bar centres, heights), as drawn."""
    from matplotlib.container import BarContainer

    return {c.get_label(): ([p.get_x() + p.get_width() / 2 for p in c.patches], [p.get_height() for p in c.patches])
            for c in axes.containers if isinstance(c, BarContainer)}


def error_bars(axes):
    """Series label -> {bar centre: half length} of the drawn error bars; every cap sits on one of them."""
    from matplotlib.container import ErrorbarContainer

    drawn = {}
    for container in axes.containers:
        if isinstance(container, ErrorbarContainer):
            _, caps, (segments,) = container.lines
            spans = {round(float(s[0][0]), 9): (float(s[1][1]) - float(s[0][1])) / 2 for s in segments.get_segments()}
            assert all({round(float(x), 9) for x in cap.get_xdata()} == set(spans) for cap in caps)
            drawn[container.get_label().lstrip("_").removesuffix(" ± std")] = spans
    return drawn


def test_base2new_charts_show_their_tables(tmp_path):
    make_base2new(tmp_path)
    write(b2n_dir(tmp_path, "train_base", "dtd", "PromptSRC", 1) / "log.txt", train_log(80.0))  # one seed, no novel
    report = build_report(discover_runs(tmp_path))
    table = next(t for t in report.tables if t.kind == "base2new" and t.label == "PromptSRC")
    axes = chart_of(report, table.name).figure.axes[0]
    drawn, spread = bars(axes), error_bars(axes)
    assert list(drawn) == ["Base", "Novel", "HM"] and set(spread) == {"Base", "Novel"}  # HM: of the seed means
    for label, key in (("Base", "base"), ("Novel", "novel"), ("HM", "hm")):
        centres, heights = drawn[label]
        assert all(same(h, v) for h, v in zip(heights, table.column(key), strict=True))
        if key != "hm":  # error bars exactly on the rows with more than one seed: not dtd, not Average
            expected = {round(x, 9): std for x, std, seeds in
                        zip(centres, table.column(f"{key}_std"), table.column(f"{key}_seeds")) if (seeds or 0) > 1}
            assert spread[label] == pytest.approx(expected) and len(expected) == 2
    assert [t.get_text() for t in axes.get_xticklabels()] == ["oxford_pets", "dtd", "eurosat", "Average"]

    overview = next(t for t in report.tables if t.kind == "base2new_overview")
    axes = chart_of(report, overview.name).figure.axes[0]
    drawn = bars(axes)
    assert list(drawn) == ["PromptSRC", "CasPL_PromptSRC"] and not error_bars(axes)  # each trainer before its cascade
    assert all(all(same(h, v) for h, v in zip(drawn[name][1], overview.column(name), strict=True)) for name in drawn)
    (light,), (dark,) = ({p.get_facecolor() for p in c.patches} for c in axes.containers)
    assert light != dark  # one hue per pair, the cascade dark
    delta = next(t for t in report.tables if t.kind == "base2new_delta")
    drawn = bars(chart_of(report, delta.name).figure.axes[0])
    for label, key in (("Δ Base", "base"), ("Δ Novel", "novel"), ("Δ HM", "hm")):
        assert all(same(h, v) for h, v in zip(drawn[label][1], delta.column(f"{key}_delta"), strict=True))


def test_few_shot_chart_writes_the_curves_of_the_table(tmp_path):
    make_few_shot(tmp_path)
    out = tmp_path / "tables"
    assert cli.main(["report", str(tmp_path), "--out", str(out), "--expect-seeds", "1"]) == 0
    assert (out / "few_shot.png").read_bytes()[:8] == PNG

    report = build_report(discover_runs(tmp_path), expect_seeds=1)
    tables = [t for t in report.tables if t.kind == "few_shot"]
    figure = chart_of(report, "few_shot").figure
    panels = {axes.get_title(): axes for axes in figure.axes if axes.axison}
    assert list(panels) == ["Average", "caltech101", "dtd"]  # the Average first, as in CoOp's figure
    checked = 0
    for table in tables:
        shots = sorted(int(c.split("_")[0]) for c in table.columns[1:] if c.endswith("_shots"))
        for row in table.rows:
            axes = panels[row[0]]
            assert axes.get_xscale() == "log"
            assert [t.get_text() for t in axes.get_xticklabels()] == ["1", "2", "4", "16"]
            line = next(l for l in axes.get_lines() if l.get_label() == table.label)
            means = [row[table.columns.index(f"{k}_shots")] for k in shots]
            stds = [row[table.columns.index(f"{k}_shots_std")] for k in shots]
            present = [(k, m, s) for k, m, s in zip(shots, means, stds) if m is not None]
            assert list(line.get_xdata()) == [k for k, _, _ in present]
            assert list(line.get_ydata()) == pytest.approx([m for _, m, _ in present])
            bands = [c for c in axes.collections if c.get_label() == f"_{table.label} ± std"]
            if any(s for _, _, s in present):  # the shaded band spans mean ± std at every shot
                (band,) = bands
                vertices = band.get_paths()[0].vertices
                for k, m, s in present:
                    ys = [y for x, y in vertices if x == k]
                    assert (min(ys), max(ys)) == pytest.approx((m - (s or 0.0), m + (s or 0.0)))
            else:  # one seed (CoOp) or an average of means: no band
                assert bands == []
            checked += 1
    assert checked == 3 + 2  # CasPL_PromptSRC: two datasets and the Average; CoOp: dtd and the Average


def test_cross_dataset_chart_writes_the_bars_of_the_table(tmp_path):
    from caspl_plugin.report.charts import xd_categories

    make_cross_dataset(tmp_path, {**XD, "imagenet_sketch": [46.0]})  # a target with one seed: no error bar
    out = tmp_path / "tables"
    assert cli.main(["report", str(tmp_path), "--out", str(out)]) == 0
    assert (out / "xd.png").read_bytes()[:8] == PNG

    report = build_report(discover_runs(tmp_path))
    tables = [t for t in report.tables if t.kind == "xd"]
    keys = xd_categories(tables)
    assert keys[0] == ("source", "imagenet") and keys[-1] == ("average", "Average (domain-generalisation)")
    axes = chart_of(report, "xd").figure.axes[0]
    drawn, spread = bars(axes), error_bars(axes)
    assert list(drawn) == ["CoOp", "PromptSRC"]
    for table in tables:
        centres, heights = drawn[table.label]
        rows = {(row[0], row[1]): dict(zip(table.columns, row)) for row in table.rows}
        for j, key in enumerate(keys):
            assert same(heights[j], rows.get(key, {}).get("accuracy")), (table.label, key)
        expected = {round(centres[keys.index(key)], 9): row["accuracy_std"] for key, row in rows.items()
                    if (row["seeds"] or 0) > 1}
        assert spread.get(table.label, {}) == pytest.approx(expected)
    # zero-spread rows draw no error bar and no caps: the one-seed target and the averages
    centres = drawn["PromptSRC"][0]
    for key in (("domain-generalisation", "imagenet_sketch"), ("average", "Average (cross-dataset)")):
        assert round(centres[keys.index(key)], 9) not in spread["PromptSRC"]
    assert len(spread["PromptSRC"]) == len(XD) and len(spread["CoOp"]) == 1


def test_demo_chart_draws_its_table_and_no_caps_on_single_runs(tmp_path, monkeypatch):
    import caspl_plugin.report.charts as charts
    from caspl_plugin.demo import DemoResult, chart, table_rows
    from caspl_plugin.report import harmonic_mean

    result = DemoResult()
    for base, novel in ((80.0, 60.0), (84.0, 70.0)):
        result.add("CoOp", base, novel)
    result.add("Student, zero-shot", 70.0, 50.0)
    figures, save_png = [], charts.save_png
    monkeypatch.setattr(charts, "save_png", lambda figure, path: figures.append(figure) or save_png(figure, path))
    path = chart(table_rows(result), tmp_path / "c.png", "title", "seeds 1, 2")
    assert path.read_bytes()[:8] == PNG
    axes = figures[0].axes[0]
    drawn, spread = bars(axes), error_bars(axes)
    assert drawn["Base"][1] == [82.0, 70.0] and drawn["Novel"][1] == [65.0, 50.0]
    assert drawn["HM"][1] == pytest.approx([harmonic_mean(82.0, 65.0), harmonic_mean(70.0, 50.0)])
    # CoOp ran twice: ± the population std of its seeds; the zero-shot row ran once: no bar, no caps
    assert spread == {"Base": {round(drawn["Base"][0][0], 9): pytest.approx(2.0)},
                      "Novel": {round(drawn["Novel"][0][0], 9): pytest.approx(5.0)}}
