"""Backend settings (`spacy_giellm.backends.settings`): one frozen,
validated dataclass per backend, built by the registered factory from the
config block's arguments; changed only through `reconfigure` /
`configured` or a new backend."""
import dataclasses
import inspect
import shutil

import pytest

from spacy_giellm.backends.settings import MODEL, OUTPUTS, SPEED

PROMPTS = ["東京の田中さんは学生です。", "大阪で会議がありました。", "日本"]


def _backend_classes():
    from spacy_giellm.backends.hf import HFBackend
    from spacy_giellm.backends.llamacpp import LlamaCppBackend
    from spacy_giellm.backends.server import ServerBackend

    return [HFBackend, LlamaCppBackend, ServerBackend]


@pytest.mark.parametrize("index", range(3), ids=["hf", "llamacpp", "server"])
def test_factory_arguments_are_the_settings_fields(index):
    """The registered factory's signature (saved configs use it) and its
    settings dataclass agree: every argument but `task` is a field, with
    the same default, and every field says what it does to the outputs."""
    from spacy.util import registry

    import spacy_giellm.backends.hf  # noqa: F401  (registers)
    import spacy_giellm.backends.llamacpp  # noqa: F401
    import spacy_giellm.backends.server  # noqa: F401

    cls = _backend_classes()[index]
    assert registry.giellm_backends.get(cls.settings_class.backend_name) is cls
    params = {name: p.default for name, p in inspect.signature(cls).parameters.items() if name != "task"}
    fields = {f.name: f for f in dataclasses.fields(cls.settings_class)}
    assert list(params) == [name for name in fields], "same names, in the same order"
    for name, default in params.items():
        if default is not inspect.Parameter.empty:
            field_default = fields[name].default
            assert field_default == default or (name == "extra_body" and default is None), name
        assert fields[name].metadata["effect"] in (OUTPUTS, MODEL, SPEED), name
    for name in ("jump_forward", "constrained", "max_new_tokens"):
        if name in fields:
            assert fields[name].metadata["effect"] == OUTPUTS


def test_settings_are_frozen_and_validated_naming_the_field(tiny_gguf):
    from spacy_giellm.backends.hf import make_hf_backend
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend
    from spacy_giellm.backends.server import make_server_backend

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_parallel=2)
    assert backend.n_parallel == backend.settings.n_parallel == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        backend.settings.n_parallel = 3
    with pytest.raises(AttributeError, match=r"n_parallel is a setting.*reconfigure"):
        backend.n_parallel = 3
    with pytest.raises(AttributeError):
        backend.settings = dataclasses.replace(backend.settings, n_parallel=3)
    for make, bad, message in (
        (lambda **kw: make_llamacpp_backend(model_path=str(tiny_gguf), **kw), {"prompt_lookup": -1},
         r"giellm.LlamaCpp.v1: prompt_lookup must be >= 0, got -1"),
        (lambda **kw: make_llamacpp_backend(model_path=str(tiny_gguf), **kw), {"n_ctx": 0}, r"n_ctx must be >= 1"),
        (lambda **kw: make_hf_backend(model="org/m", **kw), {"batch_size": 0}, r"giellm.HF.v1: batch_size must be >= 1"),
        (lambda **kw: make_hf_backend(model="org/m", **kw), {"dtype": "float8"}, r"unknown dtype 'float8'"),
        (lambda **kw: make_server_backend(url="http://127.0.0.1:9", **kw), {"server_kind": "tgi"}, r"server_kind"),
    ):
        with pytest.raises(ValueError, match=message):
            make(**bad)
        good = make()
        with pytest.raises(ValueError, match=message):  # replace validates as construction does
            good.reconfigure(dataclasses.replace(good.settings, **bad))
    assert backend.n_parallel == 2


def test_reconfigure_keeps_the_model_unless_loading_depends_on_the_change(tiny_gguf, tmp_path):
    from spacy_giellm.backends.llamacpp import make_llamacpp_backend
    from spacy_giellm.backends.settings import point_at_model_file

    backend = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=256, max_new_tokens=6, n_threads=1,
                                    task="scnm").load()
    try:
        plain = backend.generate(PROMPTS)
        with backend.configured(n_parallel=1, constrained=True):
            assert backend.is_loaded and (backend.n_parallel, backend.constrained) == (1, True)
            backend.generate(PROMPTS)
        assert (backend.n_parallel, backend.constrained) == (32, False)
        with pytest.raises(RuntimeError):
            with backend.configured(max_new_tokens=2):
                raise RuntimeError("inside")
        assert backend.max_new_tokens == 6  # put back after an error too
        copy = shutil.copyfile(tiny_gguf, tmp_path / "copy.gguf")
        assert point_at_model_file(backend, copy)
        assert not backend.is_loaded and backend.model_path == str(copy)  # loads the new file on next use
        assert backend.generate(PROMPTS) == plain
        backend.reconfigure(dataclasses.replace(backend.settings, n_ctx=512))
        assert not backend.is_loaded
        assert backend.generate(PROMPTS) == plain
        with pytest.raises(TypeError):
            backend.reconfigure(dataclasses.replace(_hf_settings(), model="org/m"))
    finally:
        backend.close()


def _hf_settings():
    from spacy_giellm.backends.settings import HFSettings

    return HFSettings(model="org/m")


def test_a_backend_from_settings_is_the_factory_one(tiny_gguf):
    from spacy_giellm.backends.llamacpp import LlamaCppBackend, make_llamacpp_backend

    made = make_llamacpp_backend(model_path=str(tiny_gguf), n_ctx=256, max_new_tokens=6, n_threads=1, task="scnm")
    other = LlamaCppBackend.from_settings(dataclasses.replace(made.settings, n_parallel=1), task="scnm")
    try:
        assert other.settings == dataclasses.replace(made.settings, n_parallel=1)
        assert other.task.name == "scnm"
        assert other.generate(PROMPTS) == made.generate(PROMPTS)
    finally:
        made.close()
        other.close()


def test_backend_config_takes_any_setting_by_name_and_type(tiny_gguf, tmp_path):
    """`evaluate-model --setting NAME=VALUE` / `backend_config(settings=...)`:
    any field of the chosen backend's settings, read by its type and
    validated at once, naming the field."""
    from typer.testing import CliRunner

    from spacy_giellm.cli import app
    from spacy_giellm.backends.build import backend_config

    cfg = backend_config(tiny_gguf, settings={"jump_forward": "false", "n_threads": "none", "prompt_lookup": 3})
    assert (cfg["jump_forward"], cfg["n_threads"], cfg["prompt_lookup"]) == (False, None, 3)
    assert backend_config("org/model", settings={"dtype": "bfloat16"})["dtype"] == "bfloat16"
    for bad, message in (({"batch_size": "2"}, "giellm.LlamaCpp.v1: no setting 'batch_size'"),
                         ({"n_parallel": "many"}, "n_parallel='many': expected int"),
                         ({"n_parallel": "0"}, "n_parallel must be >= 1, got 0"),
                         ({"jump_forward": "maybe"}, "jump_forward='maybe': expected bool")):
        with pytest.raises(ValueError, match=message):
            backend_config(tiny_gguf, settings=bad)
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"text": "日本", "task": "scnm", "label": "社会", "entities": []}\n', encoding="utf8")
    for arg, message in (("n_parallel", "write NAME=VALUE"), ("n_parallel=0", "n_parallel must be >= 1")):
        result = CliRunner().invoke(app, ["evaluate-model", str(tiny_gguf), str(gold), "-o", str(tmp_path / "m"),
                                          "-s", arg])
        assert result.exit_code != 0 and message in result.output, result.output
