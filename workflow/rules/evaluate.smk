# Evaluation: one JSON record per metric and sample set (cldsgm.records); FD-digits for the digits, sliced W2 /
# energy distance / mode coverage for 2-D points, FID/KID where the study asks for it, NLL per trained model.


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
        records=f"{RESULTS}/records/classifier",
    threads: 1
    log:
        f"{LOGS}/digits_classifier.log",
    benchmark:
        f"{BENCH}/digits_classifier.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm digits-classifier --train {input.train} --test {input.test} --epochs {params.epochs} "
        "--seed {params.seed} --out {output.classifier} --record-dir {params.records} > {log} 2>&1"


rule fd_digits:
    input:
        samples=f"{RESULTS}/samples/{{source}}/{{row}}/done.json",
        classifier=rules.digits_classifier.output.classifier,
        test=data_file("digits", "test"),
    output:
        record=f"{RESULTS}/records/{{source}}/{{row}}/fd_digits.json",
    params:
        samples=f"{RESULTS}/samples/{{source}}/{{row}}",
        out=f"{RESULTS}/records/{{source}}/{{row}}",
    threads: 1
    log:
        f"{LOGS}/fd_digits/{{source}}/{{row}}.log",
    benchmark:
        f"{BENCH}/fd_digits/{{source}}/{{row}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm fd-digits --samples {params.samples} --classifier {input.classifier} --data {input.test} "
        "--out {params.out} > {log} 2>&1"


def distance_data(wildcards):
    return data_file(row_of(wildcards.source, wildcards.row)["data"], "test")


def distance_oracle(wildcards):
    data = row_of(wildcards.source, wildcards.row)["data"]
    return "--oracle diamond" if data == "diamond" else ""


rule sample_distance:
    input:
        samples=f"{RESULTS}/samples/{{source}}/{{row}}/done.json",
        test=distance_data,
    output:
        w2=f"{RESULTS}/records/{{source}}/{{row}}/sliced_w2.json",
        energy=f"{RESULTS}/records/{{source}}/{{row}}/energy.json",
    params:
        samples=f"{RESULTS}/samples/{{source}}/{{row}}",
        out=f"{RESULTS}/records/{{source}}/{{row}}",
        oracle=distance_oracle,
    threads: 1
    log:
        f"{LOGS}/sample_distance/{{source}}/{{row}}.log",
    benchmark:
        f"{BENCH}/sample_distance/{{source}}/{{row}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample-distance --samples {params.samples} --data {input.test} {params.oracle} --out {params.out} "
        "> {log} 2>&1"


FID = EVALUATION.get("fid") or {}


rule fid_stats:
    input:
        data=lambda wc: data_file("cifar10", FID.get("reference_split", "train")),
    output:
        stats=f"{RESULTS}/fid/reference_{FID.get('mode', 'clean')}.npz",
    params:
        inception=FID.get("inception"),
        mode=FID.get("mode", "clean"),
    threads: 2
    resources:
        gpu=1,
    log:
        f"{LOGS}/fid_stats.log",
    benchmark:
        f"{BENCH}/fid_stats.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm fid-stats --data {input.data} --inception {params.inception} --mode {params.mode} "
        "--out {output.stats} > {log} 2>&1"


rule fid:
    input:
        samples=f"{RESULTS}/samples/{{source}}/{{row}}/done.json",
        stats=FID.get("stats") or rules.fid_stats.output.stats,
    output:
        record=f"{RESULTS}/records/{{source}}/{{row}}/fid.json",
    params:
        samples=f"{RESULTS}/samples/{{source}}/{{row}}",
        out=f"{RESULTS}/records/{{source}}/{{row}}",
        inception=FID.get("inception"),
        mode=FID.get("mode", "clean"),
    threads: 2
    resources:
        gpu=1,
    log:
        f"{LOGS}/fid/{{source}}/{{row}}.log",
    benchmark:
        f"{BENCH}/fid/{{source}}/{{row}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm fid --samples {params.samples} --stats {input.stats} --inception {params.inception} "
        "--mode {params.mode} --out {params.out} > {log} 2>&1"


NLL = EVALUATION.get("nll") or {}


def nll_metric(model):
    return "nll_nats" if STUDY["models"][model]["data"] in POINTS else "nll_bpd"


def nll_flags(wildcards):
    keys = {"num_samples": "--num-samples", "probes": "--probes", "n_probes": "--n-probes", "rtol": "--rtol",
            "atol": "--atol", "batch_size": "--batch-size"}
    return " ".join(f"{flag} {NLL[key]}" for key, flag in keys.items() if key in NLL)


rule nll:
    input:
        run=lambda wc: train_done(wc.model),
        test=lambda wc: data_file(STUDY["models"][wc.model]["data"], "test"),
    output:
        record=f"{RESULTS}/records/{{model}}/nll/{{metric}}.json",
    params:
        run_dir=f"{RESULTS}/runs/{{model}}",
        flags=nll_flags,
        out=f"{RESULTS}/nll/{{model}}",
        records=f"{RESULTS}/records/{{model}}/nll",
        seed=STUDY["seed"],
    threads: 1
    resources:
        gpu=1,
    log:
        f"{LOGS}/nll/{{model}}_{{metric}}.log",
    benchmark:
        f"{BENCH}/nll/{{model}}_{{metric}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm nll --run-dir {params.run_dir} --data {input.test} {params.flags} --seed {params.seed} "
        "--out {params.out} --record-dir {params.records} --no-progress > {log} 2>&1"


def records():
    """Every record the study produces (the report's and the track rule's inputs)."""
    out = []
    for row in ROWS:
        base = f"{RESULTS}/records/{row['source']}/{row['row']}"
        if row["data"] == "digits" and EVALUATION.get("fd_digits") is not None:
            out.append(f"{base}/fd_digits.json")
        if row["data"] in POINTS:
            out += [f"{base}/sliced_w2.json", f"{base}/energy.json"]
        if row["data"] == "cifar10" and FID:
            out.append(f"{base}/fid.json")
    if "digits" in STUDY["data"] and EVALUATION.get("fd_digits") is not None:
        out.append(rules.digits_classifier.output.record)
    if NLL:
        out += [f"{RESULTS}/records/{model}/nll/{nll_metric(model)}.json" for model in STUDY["models"]]
    return out
