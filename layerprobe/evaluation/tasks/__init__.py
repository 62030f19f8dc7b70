"""lm-evaluation-harness task configs shipped with layerprobe (YAML, read by the harness's TaskManager).

``layerprobe_mc``: the multiple-choice set of ``--data.mc`` (JCommonsenseQA's JSON lines) scored as
:func:`layerprobe.evaluation.forgetting.mc_accuracy` scores it. Outside layerprobe::

    lm_eval --model hf --model_args pretrained=MODEL --include_path layerprobe/evaluation/tasks --tasks layerprobe_mc \\
        --metadata '{"mc_path": "../shared/data/jcommonsenseqa"}'
"""
