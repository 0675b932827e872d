# Evaluation: one JSON record per metric and sample set (cldsgm.records); FD-digits for the digits, sliced W2 /
# energy distance / mode coverage for 2-D points (one job per source evaluates all its sample sets: one process,
# one torch import), FID/KID per sample set where the study asks for it, NLL per trained model.


rule digits_classifier:
    input:
        train=data_file("digits", "train"),
        test=data_file("digits", "test"),
    output:
        classifier=f"{RESULTS}/fd_digits/classifier.pt",
        record=f"{RESULTS}/records/classifier/classifier_accuracy.json",
    params:
        epochs=(EVALUATION.get("fd_digits") or {}).get("epochs", 30),
        seed=STUDY["seed"],
        records=lambda wc, output: os.path.dirname(output.record),
        labels=label_flags(source="classifier", row="classifier", data="digits", kind="classifier"),
    threads: 1
    log:
        f"{LOGS}/digits_classifier.log",
    benchmark:
        f"{BENCH}/digits_classifier.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm digits-classifier --train {input.train:q} --test {input.test:q} --epochs {params.epochs:q} "
        "{params.labels} "
        "--seed {params.seed:q} --out {output.classifier:q} --record-dir {params.records:q} > {log:q} 2>&1"


rule fd_digits:
    input:
        samples=source_samples,
        classifier=rules.digits_classifier.output.classifier,
        test=data_file("digits", "test"),
    output:
        done=f"{RESULTS}/records/{{source}}/fd_digits.done",
    params:
        pairs=eval_pairs,
        bootstrap=EVALUATION["bootstrap"],
    threads: 1
    log:
        f"{LOGS}/fd_digits/{{source}}.log",
    benchmark:
        f"{BENCH}/fd_digits/{{source}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm fd-digits {params.pairs} --classifier {input.classifier:q} --data {input.test:q} "
        "--bootstrap {params.bootstrap:q} > {log:q} 2>&1 "
        "&& echo complete > {output.done:q}"


rule sample_distance:
    input:
        samples=source_samples,
        test=distance_data,
    output:
        done=f"{RESULTS}/records/{{source}}/sample_distance.done",
    params:
        pairs=eval_pairs,
        oracle=distance_oracle,
        bootstrap=EVALUATION["bootstrap"],
    threads: 1
    log:
        f"{LOGS}/sample_distance/{{source}}.log",
    benchmark:
        f"{BENCH}/sample_distance/{{source}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample-distance {params.pairs} --data {input.test:q} {params.oracle} "
        "--bootstrap {params.bootstrap:q} > {log:q} 2>&1 "
        "&& echo complete > {output.done:q}"


rule fid_stats:
    input:
        data=lambda wc: data_file(TABLE["fid_data"], FID.get("reference_split", "train")),
    output:
        stats=f"{RESULTS}/fid/reference_{FID.get('mode', 'clean')}.npz",
    params:
        inception=FID.get("inception"),
        mode=FID.get("mode", "clean"),
    threads: 2
    resources:
        gpu=EVALUATION["gpus"],
    log:
        f"{LOGS}/fid_stats.log",
    benchmark:
        f"{BENCH}/fid_stats.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm fid-stats --data {input.data:q} --inception {params.inception:q} --mode {params.mode:q} "
        "--out {output.stats:q} > {log:q} 2>&1"


rule fid:
    input:
        marker=lambda wc: samples_done(wc.source),
        stats=FID.get("stats") or rules.fid_stats.output.stats,
    output:
        record=f"{RESULTS}/records/{{source}}/{{row}}/fid.json",
    params:
        samples=f"{RESULTS}/samples/{{source}}/{{row}}",
        out=lambda wc, output: os.path.dirname(output.record),
        inception=FID.get("inception"),
        mode=FID.get("mode", "clean"),
        bootstrap=EVALUATION["bootstrap"],
    threads: 2
    resources:
        gpu=EVALUATION["gpus"],
    log:
        f"{LOGS}/fid/{{source}}/{{row}}.log",
    benchmark:
        f"{BENCH}/fid/{{source}}/{{row}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm fid --samples {params.samples:q} --stats {input.stats:q} --inception {params.inception:q} "
        "--mode {params.mode:q} --bootstrap {params.bootstrap:q} --out {params.out:q} > {log:q} 2>&1"


rule nll:
    input:
        run=lambda wc: train_done(wc.model),
        test=lambda wc: data_file(model_of(wc.model)["data"], "test"),
    output:
        record=f"{RESULTS}/records/{{model}}/nll/{{metric}}.json",
    params:
        run_dir=f"{RESULTS}/runs/{{model}}",
        flags=nll_flags,
        out=f"{RESULTS}/nll/{{model}}",
        records=lambda wc, output: os.path.dirname(output.record),
        seed=STUDY["seed"],
        labels=nll_labels,
        exact=nll_exact,
    threads: 1
    resources:
        gpu=EVALUATION["gpus"],
    log:
        f"{LOGS}/nll/{{model}}_{{metric}}.log",
    benchmark:
        f"{BENCH}/nll/{{model}}_{{metric}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm nll --run-dir {params.run_dir:q} --data {input.test:q} {params.flags} --seed {params.seed:q} "
        "--out {params.out:q} --record-dir {params.records:q} {params.exact} {params.labels} "
        "> {log:q} 2>&1"
