"""`export-gguf --type auto`: the weight type that decodes fastest on this CPU."""
from spacy_giellm.training.export import cpu_flags, fastest_weight_type

NATIVE_BUILD = "CPU : AVX2 = 1 | AVX512 = 1 | AVX512_BF16 = 1 | OPENMP = 1 |"
AVX2_BUILD = "CPU : AVX2 = 1 | FMA = 1 | OPENMP = 1 |"


def test_bf16_only_where_the_cpu_and_the_build_multiply_bf16_natively():
    assert fastest_weight_type({"avx2", "avx512f", "avx512_bf16"}, NATIVE_BUILD)[0] == "bf16"
    assert fastest_weight_type({"avx2", "amx_bf16", "amx_tile"}, NATIVE_BUILD)[0] == "bf16"
    # the CPU lacks it (Ice Lake, Zen 3), or the wheel was built without it
    kind, why = fastest_weight_type({"avx2", "avx512f"}, NATIVE_BUILD)
    assert kind == "q8_0" and "no native bf16" in why
    kind, why = fastest_weight_type({"avx512_bf16"}, AVX2_BUILD)
    assert kind == "q8_0" and "build" in why
    # no flags to read (macOS, Windows): the type every CPU runs well
    assert fastest_weight_type(set(), NATIVE_BUILD)[0] == "q8_0"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) is None
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(str(tmp_path / "arm")) == {"fp", "asimd", "bf16"}


# two cores with two SMT siblings each: logical CPUs 0 and 2 share core 0
SMT_CPUINFO = "".join(
    f"processor\t: {cpu}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t\t: {cpu % 2}\nflags\t\t: fpu\n\n"
    for cpu in range(4)
)


def test_physical_cores_count_smt_siblings_once_within_the_affinity(tmp_path, monkeypatch):
    from spacy_giellm import util
    from spacy_giellm.backends import llamacpp

    info = tmp_path / "cpuinfo"
    info.write_text(SMT_CPUINFO)
    blocks = util.cpuinfo(str(info))
    assert len(blocks) == 4 and blocks[2] == {
        "processor": "2", "model name": "Test CPU", "physical id": "0", "core id": "0", "flags": "fpu",
    }
    assert util.cpuinfo(str(tmp_path / "missing")) is None
    monkeypatch.setattr(llamacpp, "cpuinfo", lambda: util.cpuinfo(str(info)))
    for allowed, cores in (({0, 1, 2, 3}, 2), ({0, 2}, 1), ({0, 1}, 2), ({3}, 1)):
        monkeypatch.setattr(llamacpp.os, "sched_getaffinity", lambda pid, allowed=allowed: allowed, raising=False)
        assert llamacpp.physical_cores() == cores, allowed
    # no topology (macOS, Windows): the CPUs this process may use
    monkeypatch.setattr(llamacpp, "cpuinfo", lambda: None)
    assert llamacpp.physical_cores() == 1  # the last affinity, {3}


def test_bench_names_the_cpu_from_cpuinfo(tmp_path, monkeypatch):
    from spacy_giellm import util
    from spacy_giellm.bench import run

    info = tmp_path / "cpuinfo"
    info.write_text(SMT_CPUINFO)
    monkeypatch.setattr(run, "cpuinfo", lambda: util.cpuinfo(str(info)))
    assert run.machine_info()["cpu"] == "Test CPU"
