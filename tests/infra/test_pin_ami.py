"""`python -m infra.pin_ami`: the DLAMI resolved once and written to the stack config."""

from __future__ import annotations

import subprocess

from botocore.exceptions import ClientError

from infra.config import DEFAULT_AMI_TYPE
from infra.pin_ami import main

AMI = "ami-0a1b2c3d4e5f60718"


class FakeSsm:
    def __init__(self, params: dict[str, str]) -> None:
        self.params = params
        self.asked: list[str] = []

    def get_parameter(self, Name: str):  # noqa: N803 - boto3's spelling
        self.asked.append(Name)
        if Name not in self.params:
            raise ClientError({"Error": {"Code": "ParameterNotFound"}}, "GetParameter")
        return {"Parameter": {"Value": self.params[Name]}}


class FakePulumi:
    def __init__(self, config: dict[str, str]) -> None:
        self.config = config
        self.calls: list[list[str]] = []

    def __call__(self, cmd, **kwargs):
        self.calls.append(list(cmd))
        if cmd[:3] == ["pulumi", "config", "get"]:
            value = self.config.get(cmd[3])
            return subprocess.CompletedProcess(cmd, 0 if value else 1, value or "", "")
        if cmd[:3] == ["pulumi", "config", "set"]:
            self.config[cmd[3]] = cmd[4]
            return subprocess.CompletedProcess(cmd, 0, "", "")
        raise AssertionError(cmd)


DEFAULT_PARAM = f"/aws/service/deeplearning/ami/x86_64/{DEFAULT_AMI_TYPE}/latest/ami-id"


def test_pins_the_default_dlami_in_the_stack_config(capsys):
    pulumi, ssm = FakePulumi({}), FakeSsm({DEFAULT_PARAM: AMI})
    assert main([], run=pulumi, ssm=ssm) == 0
    assert ssm.asked == [DEFAULT_PARAM]
    assert pulumi.config["twostage:amiId"] == AMI
    assert AMI in capsys.readouterr().out


def test_follows_the_stacks_ami_type_and_stack_flag():
    param = "/aws/service/deeplearning/ami/x86_64/other-type/latest/ami-id"
    pulumi, ssm = FakePulumi({"twostage:amiType": "other-type"}), FakeSsm({param: AMI})
    assert main(["--stack", "prod"], run=pulumi, ssm=ssm) == 0
    assert ["pulumi", "config", "set", "twostage:amiId", AMI, "--stack", "prod"] in pulumi.calls


def test_print_only_sets_nothing():
    pulumi, ssm = FakePulumi({}), FakeSsm({DEFAULT_PARAM: AMI})
    assert main(["--print-only"], run=pulumi, ssm=ssm) == 0
    assert "twostage:amiId" not in pulumi.config


def test_a_missing_parameter_is_one_line_and_exit_2(capsys):
    pulumi = FakePulumi({})
    assert main([], run=pulumi, ssm=FakeSsm({})) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: twostage:amiType: cannot read") and "ParameterNotFound" in err
    assert "twostage:amiId" not in pulumi.config


def test_a_value_that_is_not_an_ami_is_refused(capsys):
    assert main([], run=FakePulumi({}), ssm=FakeSsm({DEFAULT_PARAM: "not-an-ami"})) == 2
    assert "twostage:amiId" in capsys.readouterr().err
