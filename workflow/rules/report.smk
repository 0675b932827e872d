# The report (reports/<study>/: index.html, report.md, metrics.json, CSVs) from the records and the benchmark
# files, and MLflow: a parent run per study made once before any job, and a track rule that logs whatever the
# store does not hold yet (it warns and finishes when the store is down; run it again later).


rule mlflow_init:
    output:
        parent=f"{RESULTS}/tracking/parent.json",
    params:
        uri=STUDY["tracking"]["uri"],
        experiment=NAME,
    log:
        f"{LOGS}/mlflow_init.log",
    benchmark:
        f"{BENCH}/mlflow_init.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm track --init --experiment {params.experiment:q} --uri {params.uri:q} --parent-out {output.parent:q} "
        "--soft > {log:q} 2>&1"


rule report:
    input:
        records=records(),
        runs=[train_done(run) for run in TABLE["replicas"]],
        study=STUDY_FILE,
    output:
        html=f"reports/{NAME}/index.html",
        metrics=f"reports/{NAME}/metrics.json",
        markdown=f"reports/{NAME}/report.md",
    params:
        results=lambda wc, input: os.path.dirname(os.path.dirname(os.path.dirname(input.runs[0]))),
        out=lambda wc, output: os.path.dirname(output.html),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{BENCH}/report.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm report --study {input.study:q} --results {params.results:q} --out {params.out:q} > {log:q} 2>&1"


rule track:
    input:
        parent=f"{RESULTS}/tracking/parent.json",
        report=rules.report.output.html,
        records=records(),
    output:
        tracked=f"{RESULTS}/tracking/tracked.json",
    params:
        runs=" ".join(flag("--run-dir", f"{RESULTS}/runs/{model}") for model in TRAINED),  # imported: no log
        records=lambda wc, input: f"{os.path.dirname(os.path.dirname(input.parent))}/records",
        report=lambda wc, input: os.path.dirname(input.report),
        study=STUDY_FILE,
    log:
        f"{LOGS}/track.log",
    benchmark:
        f"{BENCH}/track.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm track --parent-run {input.parent:q} {params.runs} --records {params.records:q} "
        "--artifacts {params.report:q} --study {params.study:q} --soft --summary {output.tracked:q} > {log:q} 2>&1"
