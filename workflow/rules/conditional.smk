# Conditional generation (the study's `conditional` section): noise-conditioned classifiers trained like
# the score models (`cldsgm train-classifier`), then one job per conditional sample set (a class-conditional set
# guided by a classifier, `cldsgm sample --classifier`, or an inpainted set, `cldsgm inpaint`), then per group of
# sets one job for class accuracy (and the known pixels' error of inpainted sets) and one for the distance: per-class
# FD-digits / sliced W2 of guided sets, FD-digits / sliced W2 of completions against the held-out split. The sets
# and groups come from cldsgm.study.conditional_table (TABLE["conditional"]); common.smk maps them to flags.

rule train_classifier:
    input:
        data=lambda wc: data_file(CLASSIFIERS[wc.classifier]["data"], "train"),
        config=lambda wc: CLASSIFIERS[wc.classifier]["config"],
        parent=parent_run(),
    output:
        done=f"{RESULTS}/classifiers/{{classifier}}/done.json",
    wildcard_constraints:
        classifier=one_of(CLASSIFIERS),
    params:
        flags=lambda wc, input: set_flags({**(CLASSIFIERS[wc.classifier].get("overrides") or {}),
                                           "data.path": input.data, "seed": STUDY["seed"]}),
        tracking=parent_flag,
        run_dir=f"{RESULTS}/classifiers/{{classifier}}",
    threads: 1
    priority: 1
    log:
        f"{LOGS}/train_classifier/{{classifier}}.log",
    benchmark:
        f"{BENCH}/train_classifier/{{classifier}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm train-classifier --config {input.config:q} --run-dir {params.run_dir:q} {params.flags} "
        "{params.tracking} --done {output.done:q} > {log:q} 2>&1"


rule guided_sample:
    input:
        conditional_inputs,
    output:
        done=f"{RESULTS}/conditional/{{source}}/{{crow}}/done.json",
    wildcard_constraints:
        crow=r"guided-[A-Za-z0-9_.-]+",
    params:
        args=conditional_args,
    threads: 1
    resources:
        gpu=SAMPLING["gpus"],
    log:
        f"{LOGS}/conditional/{{source}}/{{crow}}.log",
    benchmark:
        f"{BENCH}/conditional/{{source}}/{{crow}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample {params.args} --done {output.done:q} > {log:q} 2>&1"


rule inpaint_sample:
    input:
        conditional_inputs,
    output:
        done=f"{RESULTS}/conditional/{{source}}/{{crow}}/done.json",
    wildcard_constraints:
        crow=r"inpaint-[A-Za-z0-9_.-]+",
    params:
        args=conditional_args,
    threads: 1
    resources:
        gpu=SAMPLING["gpus"],
    log:
        f"{LOGS}/conditional/{{source}}/{{crow}}.log",
    benchmark:
        f"{BENCH}/conditional/{{source}}/{{crow}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm inpaint {params.args} --done {output.done:q} > {log:q} 2>&1"


# per group of sets (cldsgm.study.conditional_groups: a source's guided sets of one classifier and class, or its
# inpainted sets): one process and one torch import for several sets, the records in each set's own folder
rule conditional_accuracy:
    input:
        group_inputs,
    output:
        done=f"{RESULTS}/records/conditional/{{source}}/{{group}}.accuracy.done",
    params:
        pairs=conditional_pairs,
        judge=group_judge,
        bootstrap=EVALUATION["bootstrap"],
    threads: 1
    log:
        f"{LOGS}/conditional_accuracy/{{source}}/{{group}}.log",
    benchmark:
        f"{BENCH}/conditional_accuracy/{{source}}/{{group}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm class-accuracy {params.pairs} --classifier {params.judge:q} --bootstrap {params.bootstrap:q} "
        "> {log:q} 2>&1 && echo complete > {output.done:q}"


rule conditional_fd_digits:
    input:
        group_inputs,
        classifier=rules.digits_classifier.output.classifier,
    output:
        done=f"{RESULTS}/records/conditional/{{source}}/{{group}}.fd_digits.done",
    wildcard_constraints:
        group=groups_of("fd_digits"),
    params:
        pairs=conditional_pairs,
        reference=group_reference,
        bootstrap=EVALUATION["bootstrap"],
    threads: 1
    log:
        f"{LOGS}/conditional_distance/{{source}}/{{group}}.log",
    benchmark:
        f"{BENCH}/conditional_distance/{{source}}/{{group}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm fd-digits {params.pairs} --classifier {input.classifier:q} {params.reference} "
        "--bootstrap {params.bootstrap:q} > {log:q} 2>&1 && echo complete > {output.done:q}"


rule conditional_sample_distance:
    input:
        group_inputs,
    output:
        done=f"{RESULTS}/records/conditional/{{source}}/{{group}}.sample_distance.done",
    wildcard_constraints:
        group=groups_of("sample_distance"),
    params:
        pairs=conditional_pairs,
        reference=group_reference,
        bootstrap=EVALUATION["bootstrap"],
    threads: 1
    log:
        f"{LOGS}/conditional_distance/{{source}}/{{group}}.log",
    benchmark:
        f"{BENCH}/conditional_distance/{{source}}/{{group}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample-distance {params.pairs} {params.reference} --bootstrap {params.bootstrap:q} > {log:q} 2>&1 "
        "&& echo complete > {output.done:q}"
