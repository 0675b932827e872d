# What the papers argue from besides sample quality, one record each (cldsgm.eval.properties): the floor of every
# sample metric (real items scored like a sample set), the score's Jacobian norm over t, the HSM and DSM gradients'
# variance at each CLD network, and how fast each SDE takes an exact data law to its prior.


rule floor_fd_digits:
    input:
        real=lambda wc: data_file(wc.data, "train"),
        test=lambda wc: data_file(wc.data, "test"),
        classifier=rules.digits_classifier.output.classifier,
    output:
        done=f"{RESULTS}/records/floor-{{data}}/floor.fd_digits.done",
    wildcard_constraints:
        data=floors_of("fd_digits"),
    params:
        out=f"{RESULTS}/records/floor-{{data}}",
        n=lambda wc: TABLE["floors"][wc.data],
        bootstrap=EVALUATION["bootstrap"],
        labels=lambda wc: label_flags(source=f"floor-{wc.data}", row=f"floor-n{TABLE['floors'][wc.data]}",
                                      variant="floor", data=wc.data),
    threads: 1
    log:
        f"{LOGS}/floor/{{data}}.log",
    benchmark:
        f"{BENCH}/floor/{{data}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm fd-digits --classifier {input.classifier:q} --real {input.real:q} --n {params.n:q} "
        "--data {input.test:q} --out {params.out:q} {params.labels} --bootstrap {params.bootstrap:q} > {log:q} 2>&1 "
        "&& echo complete > {output.done:q}"


rule floor_sample_distance:
    input:
        real=lambda wc: data_file(wc.data, "train"),
        test=lambda wc: data_file(wc.data, "test"),
    output:
        done=f"{RESULTS}/records/floor-{{data}}/floor.sample_distance.done",
    wildcard_constraints:
        data=floors_of("sample_distance"),
    params:
        out=f"{RESULTS}/records/floor-{{data}}",
        n=lambda wc: TABLE["floors"][wc.data],
        bootstrap=EVALUATION["bootstrap"],
        labels=lambda wc: label_flags(source=f"floor-{wc.data}", row=f"floor-n{TABLE['floors'][wc.data]}",
                                      variant="floor", data=wc.data),
        oracle=lambda wc: mode_law_flag(wc.data),
    threads: 1
    log:
        f"{LOGS}/floor/{{data}}.log",
    benchmark:
        f"{BENCH}/floor/{{data}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm sample-distance --real {input.real:q} --n {params.n:q} --data {input.test:q} {params.oracle} "
        "--out {params.out:q} {params.labels} --bootstrap {params.bootstrap:q} > {log:q} 2>&1 "
        "&& echo complete > {output.done:q}"


rule score_jacobian:
    input:
        run=sample_inputs,
        data=lambda wc: data_file(SOURCES[wc.source]["data"], "test"),
    output:
        record=f"{RESULTS}/records/{{source}}/smoothness/score_jacobian.json",
    params:
        source=property_source,
        n=(EVALUATION.get("smoothness") or {}).get("n", 256),
        seed=STUDY["seed"],
        bootstrap=EVALUATION["bootstrap"],
        out=lambda wc, output: os.path.dirname(output.record),
        labels=lambda wc: property_labels(wc.source, "smoothness"),
    threads: 1
    log:
        f"{LOGS}/score_jacobian/{{source}}.log",
    benchmark:
        f"{BENCH}/score_jacobian/{{source}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm score-jacobian {params.source} --data {input.data:q} --n {params.n:q} --seed {params.seed:q} "
        "--bootstrap {params.bootstrap:q} --out {params.out:q} {params.labels} > {log:q} 2>&1"


rule objective_variance:
    input:
        run=lambda wc: train_done(wc.model),
        data=lambda wc: data_file(model_of(wc.model)["data"], "test"),
    output:
        hsm=f"{RESULTS}/records/{{model}}/grad/hsm/grad_variance.json",
        dsm=f"{RESULTS}/records/{{model}}/grad/dsm/grad_variance.json",
    params:
        run_dir=f"{RESULTS}/runs/{{model}}",
        n=(EVALUATION.get("loss_variance") or {}).get("n", 256),
        seed=STUDY["seed"],
        bootstrap=EVALUATION["bootstrap"],
        out=f"{RESULTS}/records/{{model}}/grad",
        labels=lambda wc: property_labels(wc.model),
    threads: 1
    log:
        f"{LOGS}/objective_variance/{{model}}.log",
    benchmark:
        f"{BENCH}/objective_variance/{{model}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm objective-variance --run-dir {params.run_dir:q} --data {input.data:q} --n {params.n:q} "
        "--seed {params.seed:q} --bootstrap {params.bootstrap:q} --out {params.out:q} {params.labels} > {log:q} 2>&1"


rule equilibrium:
    output:
        record=f"{RESULTS}/records/{{law}}/equilibrium/prior_kl.json",
    params:
        flags=equilibrium_flags,
        n=(EVALUATION.get("equilibrium") or {}).get("n", 20000),
        times=(EVALUATION.get("equilibrium") or {}).get("times", 50),
        seed=STUDY["seed"],
        bootstrap=EVALUATION["bootstrap"],
        out=lambda wc, output: os.path.dirname(output.record),
    threads: 1
    log:
        f"{LOGS}/equilibrium/{{law}}.log",
    benchmark:
        f"{BENCH}/equilibrium/{{law}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm equilibrium {params.flags} --n {params.n:q} --times {params.times:q} --seed {params.seed:q} "
        "--bootstrap {params.bootstrap:q} --out {params.out:q} > {log:q} 2>&1"
