"""caspl models: which CLIPs can be the student, what is found locally, and that the verdict is true."""
import json

import open_clip
import pytest

from caspl_plugin.cli import main
from caspl_plugin.cli.models_cmd import student_problem


def test_models_lists_roles_tags_and_local_weights(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["ViT-B/16"]["student"] and "openai" in rows["ViT-B/16"]["pretrained_tags"]
    assert not rows["RN50"]["student"] and "ViT" in rows["RN50"]["why_not_student"]
    assert rows["toy-student"]["weights_found"] == "package:toy-student"
    assert main(["models"]) == 0
    assert "teacher only" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["ViT-B-16-SigLIP", "RN50", "coca_ViT-B-32"])
def test_configs_the_prompt_mechanism_cannot_drive_are_teachers_only(arch):
    assert student_problem(open_clip.get_model_config(arch))


def test_the_student_verdict_holds_for_a_buildable_model(tiny_student):
    from caspl_plugin.clip.names import resolve_model_name
    from caspl_plugin.prompts import PromptedCLIP

    assert student_problem(open_clip.get_model_config(resolve_model_name("caspl-tiny-student"))) == ""
    PromptedCLIP(tiny_student)  # the mechanism takes it
