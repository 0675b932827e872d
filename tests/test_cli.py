"""The command-line interface, driven through click's runner (same code path as the console script)."""

from click.testing import CliRunner

from cldsgm.cli import main


def test_kernel_table_prints_published_values():
    result = CliRunner().invoke(main, ["kernel", "--sde", "cld", "--numerical-eps", "0", "--times", "1,0.001"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[1].split()[1:] == ["0.999984", "7.076212e-06", "0.2499969", "2.000012", "2.000013"]
    assert lines[2].split()[-2] == "19.9371"


def test_kernel_rejects_time_outside_unit_interval():
    result = CliRunner().invoke(main, ["kernel", "--times", "0.5,2"])
    assert result.exit_code == 2
    assert "t must lie in [0, 1]" in result.output


def test_kernel_rejects_non_numbers():
    result = CliRunner().invoke(main, ["kernel", "--times", "a,b"])
    assert result.exit_code == 2 and "comma-separated numbers" in result.output


def test_sampler_bench_prints_table_and_writes_csv(tmp_path):
    import pandas as pd

    out = tmp_path / "sub" / "bench.csv"
    result = CliRunner().invoke(main, ["sampler-bench", "--sde", "cld", "--samplers", "em,sscs,sscs-ref", "--nfe",
                                       "8,16", "--n-samples", "400", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert "sliced_w2" in result.output and "exact" in result.output
    table = pd.read_csv(out)
    assert len(table) == 1 + 3 * 2
    assert set(table["sampler"]) == {"exact", "em", "sscs", "sscs-ref"}
    assert (table.loc[table.sampler != "exact", "nfe"] == table.loc[table.sampler != "exact", "nfe_budget"]).all()
    assert list(tmp_path.joinpath("sub").iterdir()) == [out]  # no temporary file left behind
    # more NFE, closer to the data law (EM on diamond, a large effect at these budgets)
    em = table[table.sampler == "em"].set_index("nfe")["energy"]
    assert em[16] < em[8]


def test_sampler_bench_ode_and_vpsde_pc():
    result = CliRunner().invoke(main, ["sampler-bench", "--sde", "vpsde", "--samplers", "pc,ode", "--nfe", "9",
                                       "--n-samples", "200", "--ode-tol", "1e-3"])
    assert result.exit_code == 0, result.output
    assert " pc " in result.output and " ode " in result.output


def test_sampler_bench_rejects_sscs_for_vpsde_and_bad_budgets():
    runner = CliRunner()
    result = runner.invoke(main, ["sampler-bench", "--sde", "vpsde", "--samplers", "sscs"])
    assert result.exit_code == 2 and "sscs" in result.output and "phase-space" in result.output
    result = runner.invoke(main, ["sampler-bench", "--samplers", "em", "--nfe", "1", "--n-samples", "10"])
    assert result.exit_code == 2 and "nfe" in result.output
    result = runner.invoke(main, ["sampler-bench", "--samplers", "heun"])
    assert result.exit_code == 2 and "unknown sampler" in result.output
    result = runner.invoke(main, ["sampler-bench", "--samplers", "em", "--t-min", "2", "--n-samples", "10"])
    assert result.exit_code == 2 and "t_min" in result.output
