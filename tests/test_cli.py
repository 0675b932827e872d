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
