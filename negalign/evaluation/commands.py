"""Entry points for `negalign judge | eval | compare | llm-judge`; each imports its module only when run, so
the command line starts fast."""


def cmd_judge(argv: list[str]) -> int:
    from negalign.evaluation.judge import cmd_judge as run

    return run(argv)


def cmd_eval(argv: list[str]) -> int:
    from negalign.evaluation.evaluate import cmd_eval as run

    return run(argv)


def cmd_compare(argv: list[str]) -> int:
    from negalign.evaluation.report import cmd_compare as run

    return run(argv)


def cmd_llm_judge(argv: list[str]) -> int:
    from negalign.evaluation.llm_judge import cmd_llm_judge as run

    return run(argv)
