"""Model-based metrics against closed forms and reference libraries: FID against the Fréchet distance
of two known Gaussians (scipy sqrtm), KID against the unbiased MMD² written out by hand, CLIP scores
against 100·max(cos, 0) computed by hand with a tiny random CLIP, LPIPS against the lpips package on
the same random trunk. Missing weights fail fast, naming the file, with the network blocked."""

import io
import socket
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import lpips
import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from torchmetrics.image.fid import NoTrainInceptionV3
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

import loralab
from loralab.core.checkpoints import TOKENIZER
from loralab.core.host import configure as configure_host
from loralab.core.metrics import clip, fid, weights
from loralab.core.scores import ScoreTable
from loralab.nodes.score_model import (
    LoRALabCLIPScore,
    LoRALabCLIPSimilarity,
    LoRALabFIDKID,
    LoRALabLPIPS,
)


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """An empty headless models folder and torch hub cache: only what a test puts there exists."""
    configure_host(models=(Path(tmp_path / "models"),))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "models"


# --- FID / KID ------------------------------------------------------------------------------------


class KnownFeatures(torch.nn.Module):
    """Image k (all pixels k/255) has the feature vector ``table[k]``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table, self.num_features = table, table.shape[1]

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3  # what Inception gets
        return self.table[x[:, 0, 0, 0].long()]


def id_images(ids) -> torch.Tensor:
    return (torch.as_tensor(ids, dtype=torch.float32) / 255).view(-1, 1, 1, 1).expand(-1, 2, 2, 3)


def gaussian_sample(n, mean, cov, g):
    """n points whose sample mean and unbiased sample covariance are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1))).T  # whitened: sample cov = I
    return mean + z @ torch.linalg.cholesky(cov).T


def random_gaussian(d, g):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(d, generator=g, dtype=torch.float64), a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_fid_equals_the_closed_form_frechet_distance_of_two_gaussians():
    g = torch.Generator().manual_seed(0)
    (mu1, s1), (mu2, s2) = random_gaussian(6, g), random_gaussian(6, g)
    table = torch.cat([gaussian_sample(100, mu1, s1, g), gaussian_sample(80, mu2, s2, g)])
    expected = (mu1 - mu2).square().sum().item() + np.trace(
        s1.numpy() + s2.numpy() - 2 * scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real)
    feature = KnownFeatures(table)
    result = fid.fid_kid(id_images(range(100)), id_images(range(100, 180)), feature, batch_size=7)
    assert result["fid"] == pytest.approx(expected, rel=1e-6)
    assert (result["n_generated"], result["n_reference"], result["feature_dim"]) == (100, 80, 6)
    # Batches accumulate: one batch, or a stream of uneven batches, gives the same numbers.
    stream = [id_images(range(0, 33)), id_images(range(33, 100))]
    for other in (fid.fid_kid(id_images(range(100)), id_images(range(100, 180)), feature, batch_size=500),
                  fid.fid_kid(stream, id_images(range(100, 180)), feature, batch_size=16)):
        assert other["fid"] == pytest.approx(result["fid"], rel=1e-9)
        assert other["kid_mean"] == pytest.approx(result["kid_mean"], rel=1e-9)


def test_fid_of_a_set_against_itself_is_zero():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(50, 8, generator=g, dtype=torch.float64) * 3 + 1
    result = fid.fid_kid(id_images(range(50)), id_images(range(50)), KnownFeatures(table), batch_size=16)
    assert abs(result["fid"]) < 1e-6


def unbiased_mmd2(x, y):
    """Bińkowski et al.'s unbiased MMD² with k(a, b) = (aᵀb / d + 1)³, written out term by term."""
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_on_whole_small_sets_equals_the_unbiased_mmd2():
    g = torch.Generator().manual_seed(2)
    table = torch.cat([torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g) + 0.5]).double()
    result = fid.fid_kid(id_images(range(12)), id_images(range(12, 24)), KnownFeatures(table), batch_size=5)
    assert result["kid_subset_size"] == 12  # asked 1000, capped at the set size
    x, y = table[:12].numpy(), table[12:].numpy()
    assert result["kid_mean"] == pytest.approx(unbiased_mmd2(x, y), rel=1e-9)
    assert result["kid_std"] == pytest.approx(0, abs=1e-12)  # every subset is the whole set


def test_kid_is_unbiased_for_small_samples_of_one_distribution():
    """Over many pairs of 6-image sets from one distribution, KID averages to 0 (true MMD² = 0),
    while the biased estimator (diagonal kept) is clearly positive: the test can tell them apart."""
    g = torch.Generator().manual_seed(3)
    m, trials = 6, 300
    kid, biased = [], []
    for _ in range(trials):
        table = torch.randn(2 * m, 4, generator=g, dtype=torch.float64)
        result = fid.fid_kid(id_images(range(m)), id_images(range(m, 2 * m)), KnownFeatures(table),
                             kid_subsets=1)
        kid.append(result["kid_mean"])
        k = (table @ table.T / 4 + 1) ** 3
        biased.append((k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean()).item())
    kid, biased = np.array(kid), np.array(biased)
    assert abs(kid.mean()) < 4 * kid.std() / np.sqrt(trials)
    assert biased.mean() > 4 * biased.std() / np.sqrt(trials)


class RandomInception(NoTrainInceptionV3):
    """torchmetrics' Inception with its random initial weights (no real weights offline)."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def random_inception_file(folder, dims="64"):
    buffer = io.BytesIO()
    torch.save({}, buffer)
    buffer.seek(0)
    torch.manual_seed(0)
    model = RandomInception("inception-v3-compat", [dims], buffer)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / weights.INCEPTION.name)
    return model


def test_fid_node_loads_inception_from_the_models_folder(models_dir):
    """The 64-feature layer keeps this fast (the whole file is loaded; the forward stops early)."""
    reference_model = random_inception_file(models_dir / "metrics")
    g = torch.Generator().manual_seed(4)
    generated, reference = torch.rand(3, 64, 64, 3, generator=g), torch.rand(4, 48, 40, 3, generator=g)
    extractor = fid.inception(weights.find_weight_file("", weights.INCEPTION), 64)
    torch.testing.assert_close(extractor(fid.as_uint8_nchw(generated)), reference_model(fid.as_uint8_nchw(generated)))
    table = ScoreTable(("model", "seed"), [{"model": "m", "seed": s} for s in range(3)])
    (scores,) = LoRALabFIDKID().score(generated, reference, "lora-a", weights.INCEPTION.name, "64", 10, 1000, 2,
                                      image_scores=table)
    assert scores.keys == ("model", "set")  # seed differs per image, so it is no key of the set
    row = scores.rows[0]
    assert (row["model"], row["set"], row["n_generated"], row["n_reference"], row["kid_subset_size"]) == \
        ("m", "lora-a", 3, 4, 3)
    assert row["fid"] > 0 and np.isfinite(row["kid_mean"])


def test_random_inception_is_the_seeded_network_and_its_columns_say_so(models_dir, no_network):
    g = torch.Generator().manual_seed(6)
    generated, reference = torch.rand(3, 40, 40, 3, generator=g), torch.rand(3, 40, 40, 3, generator=g)
    (rand,) = LoRALabFIDKID().score(generated, reference, "x", "random", "64", 5, 1000, 2)
    random_inception_file(models_dir / "metrics")  # the same construction, seed 0, written to a file
    (from_file,) = LoRALabFIDKID().score(generated, reference, "x", "auto", "64", 5, 1000, 2)
    row, ref = rand.rows[0], from_file.rows[0]
    assert "fid" not in row and "kid_mean" not in row
    assert row["fid_rand"] == pytest.approx(ref["fid"], rel=1e-9) and row["fid_rand"] > 0
    assert row["kid_mean_rand"] == pytest.approx(ref["kid_mean"], rel=1e-9)


# --- CLIP -----------------------------------------------------------------------------------------


@pytest.fixture
def tiny_clip(models_dir):
    """A tiny random CLIP saved as a Hugging Face folder (no tokenizer files: ours is used). Seed 1
    gives cosines of both signs on the test images."""
    torch.manual_seed(1)
    config = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=77),
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4), projection_dim=16)
    folder = models_dir / "clip_vision" / "tiny-clip"
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def by_hand_embeddings(model, images=None, texts=None):
    """CLIP preprocessing at the model's own size (no resize): 8-bit, then CLIP's mean and std."""
    with torch.no_grad():
        if texts is not None:
            tokens = CLIPTokenizer.from_pretrained(TOKENIZER)(texts, padding=True, return_tensors="pt")
            e = model.get_text_features(**tokens).pooler_output
        else:
            x = (images.clamp(0, 1) * 255).round() / 255
            mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258,
                                                                                        0.27577711])
            e = model.get_image_features(pixel_values=((x - mean) / std).permute(0, 3, 1, 2)).pooler_output
    return e / e.norm(dim=-1, keepdim=True)


def test_clip_score_equals_100_max_cos_0_by_hand(tiny_clip):
    images = torch.rand(8, 32, 32, 3, generator=torch.Generator().manual_seed(5))
    prompts = ["a photo of a cat", "a red bicycle", "an oil painting of a harbour", "a dog on a beach"]
    table = ScoreTable(("category", "prompt", "seed"),
                       [{"category": "c", "prompt": prompts[i % 4], "seed": i} for i in range(8)])
    (scores,) = LoRALabCLIPScore().score(images, "tiny-clip", "", 3, image_scores=table)
    cos = (by_hand_embeddings(tiny_clip, images) * by_hand_embeddings(tiny_clip, texts=[prompts[i % 4]
                                                                                        for i in range(8)])).sum(-1)
    assert (cos < 0).any() and (cos > 0).any()  # both sides of the max(·, 0)
    ours = torch.tensor([row["clip_score"] for row in scores.rows], dtype=torch.float64)
    torch.testing.assert_close(ours, 100 * cos.double().clamp(min=0), atol=1e-4, rtol=0)
    assert scores.keys == ("category", "prompt", "seed") and scores.rows[3]["seed"] == 3
    # Prompts typed in: one line per run of equal images (prompt-major, as Generate makes them).
    (typed,) = LoRALabCLIPScore().score(images, "tiny-clip", "a photo of a cat\nstyle: a red bicycle", 8)
    cos = (by_hand_embeddings(tiny_clip, images) *
           by_hand_embeddings(tiny_clip, texts=["a photo of a cat"] * 4 + ["a red bicycle"] * 4)).sum(-1)
    torch.testing.assert_close(torch.tensor([r["clip_score"] for r in typed.rows], dtype=torch.float64),
                               100 * cos.double().clamp(min=0), atol=1e-4, rtol=0)


def test_clip_content_and_style_similarity_equal_cosines_by_hand(tiny_clip):
    g = torch.Generator().manual_seed(6)
    images, sources, style = (torch.rand(n, 32, 32, 3, generator=g) for n in (5, 5, 3))
    (scores,) = LoRALabCLIPSimilarity().score(images, "tiny-clip", 2, source=sources, style=style)
    e, s, t = (by_hand_embeddings(tiny_clip, x) for x in (images, sources, style))
    for i, row in enumerate(scores.rows):
        assert row["clip_content_sim"] == pytest.approx(float(e[i] @ s[i]), abs=1e-5)
        assert row["clip_style_sim"] == pytest.approx(sum(float(e[i] @ t[j]) for j in range(3)) / 3, abs=1e-5)
    # One source for all images.
    one = clip.content_similarity(clip.load_clip(weights.find_clip_folder("tiny-clip")), images, sources[:1])
    torch.testing.assert_close(one, (e @ s[0]).double(), atol=1e-5, rtol=0)


def test_a_vision_only_or_incomplete_clip_folder_is_refused(tiny_clip, models_dir):
    from safetensors.torch import load_file, save_file

    folder = models_dir / "clip_vision" / "tiny-clip"
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("text_projection")}, folder / "model.safetensors")
    with pytest.raises(weights.WeightsError, match="lacks 1 weights .*text_projection.weight"):
        clip.load_clip(folder)
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"model_type": "clip",', '"model_type": "clip_vision_model",'))
    with pytest.raises(weights.WeightsError, match="'clip_vision_model' model; the CLIP metrics need a full CLIP"):
        clip.load_clip(folder)


# --- LPIPS ----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*(pretrained|weights).*:UserWarning")  # lpips calls torchvision's old API
@pytest.mark.parametrize("net,tv_model", [("alex", torchvision.models.alexnet),
                                          ("squeeze", torchvision.models.squeezenet1_1),
                                          ("vgg", torchvision.models.vgg16)])
def test_lpips_equals_the_lpips_package_on_the_same_random_trunk(models_dir, net, tv_model):
    torch.manual_seed(0)
    reference_model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False).eval()
    trunk = {"features." + k.split(".", 1)[1]: v for k, v in reference_model.net.state_dict().items()}
    with torch.device("meta"):  # shapes only
        torchvision_shapes = {k: v.shape for k, v in tv_model(weights=None).state_dict().items()}
    assert all(torchvision_shapes[k] == v.shape for k, v in trunk.items())  # torchvision's own layout
    (models_dir / "metrics").mkdir(parents=True)
    torch.save(trunk, models_dir / "metrics" / weights.LPIPS_TRUNKS[net].name)

    g = torch.Generator().manual_seed(7)
    images, refs = torch.rand(4, 48, 40, 3, generator=g), torch.rand(4, 48, 40, 3, generator=g)
    (scores,) = LoRALabLPIPS().score(images, refs, net, "auto", 2)
    with torch.no_grad():
        expected = reference_model(images.permute(0, 3, 1, 2), refs.permute(0, 3, 1, 2), normalize=True).flatten()
    ours = torch.tensor([row[f"lpips_{net}"] for row in scores.rows])
    assert expected.min() > 0.01
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    (same,) = LoRALabLPIPS().score(images, images[2:3], net, "auto", 4)  # one reference for all
    assert same.rows[2][f"lpips_{net}"] == 0 and min(r[f"lpips_{net}"] for r in same.rows) == 0
    assert sum(r[f"lpips_{net}"] > 0 for r in same.rows) == 3



@pytest.mark.filterwarnings("ignore:.*(pretrained|weights).*:UserWarning")
def test_random_trunk_lpips_is_the_lpips_package_with_a_seeded_random_trunk(models_dir, no_network):
    torch.manual_seed(0)
    reference_model = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False).eval()
    g = torch.Generator().manual_seed(3)
    images, refs = torch.rand(3, 40, 40, 3, generator=g), torch.rand(3, 40, 40, 3, generator=g)
    torch.manual_seed(123)  # the node seeds the trunk itself and leaves the global RNG alone
    state = torch.random.get_rng_state()
    (scores,) = LoRALabLPIPS().score(images, refs, "alex", "random", 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.no_grad():
        expected = reference_model(images.permute(0, 3, 1, 2), refs.permute(0, 3, 1, 2), normalize=True).flatten()
    assert set(scores.columns) >= {"lpips_alex_rand"} and "lpips_alex" not in scores.columns
    ours = torch.tensor([r["lpips_alex_rand"] for r in scores.rows], dtype=torch.float64)
    torch.testing.assert_close(ours, expected.double(), atol=1e-5, rtol=1e-5)


def test_the_embedded_tiny_clip_loads_offline_and_scores_like_any_clip_folder(no_network):
    folder = weights.find_clip_folder(weights.EMBEDDED_CLIP)
    assert folder == Path(loralab.__file__).parent / "models" / "tiny-clip"
    model = clip.load_clip(folder)
    assert next(model.model.parameters()).dtype == torch.float32  # stored fp16, scored in fp32
    images = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(5))  # its input size
    (scores,) = LoRALabCLIPScore().score(images, weights.EMBEDDED_CLIP, "a red apple\na blue car", 2)
    cos = (by_hand_embeddings(model.model, images) *
           by_hand_embeddings(model.model, texts=["a red apple", "a blue car"])).sum(-1)
    expected = (100 * cos.clamp(min=0)).tolist()
    assert [r["clip_score"] for r in scores.rows] == pytest.approx(expected, abs=1e-3)


# --- Missing weights ------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def run_fast(call) -> str:
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        call()
    assert time.perf_counter() - start < 3
    return str(info.value)


def test_missing_weights_fail_fast_naming_the_file_and_where_to_put_it(models_dir, tmp_path, no_network):
    images = torch.rand(2, 32, 32, 3)
    message = run_fast(lambda: LoRALabFIDKID().score(images, images, "x", weights.INCEPTION.name, "2048", 10, 10, 4))
    assert message.startswith("LoRA Lab: FID / KID: input 'inception_weights'")
    assert weights.INCEPTION.name in message and str(models_dir / "metrics") in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message and weights.INCEPTION.url in message

    for net, trunk in weights.LPIPS_TRUNKS.items():
        message = run_fast(lambda net=net: LoRALabLPIPS().score(images, images, net, "auto", 4))
        assert message.startswith("LoRA Lab: LPIPS: input 'trunk_weights'")
        assert trunk.name in message and str(models_dir / "metrics") in message and trunk.url in message

    message = run_fast(lambda: LoRALabCLIPScore().score(images, weights.CLIP_DEFAULT, "a cat", 4))
    assert message.startswith("LoRA Lab: CLIP Score: input 'clip_model'")
    assert f"'{weights.CLIP_DEFAULT}'" in message and str(models_dir / "clip_vision") in message
    folder = models_dir / "clip_vision" / "half-copied"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    message = run_fast(lambda: LoRALabCLIPSimilarity().score(images, str(folder), 4, source=images))
    assert "lacks model.safetensors" in message and str(folder) in message

    message = run_fast(lambda: LoRALabLPIPS().score(images, images, "alex", str(tmp_path / "nowhere.pth"), 4))
    assert "nowhere.pth" in message and "does not exist" in message


def test_a_wrong_weights_file_is_named_in_the_error(models_dir, no_network):
    (models_dir / "metrics").mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1)}, models_dir / "metrics" / weights.INCEPTION.name)
    images = torch.rand(2, 32, 32, 3)
    message = run_fast(lambda: LoRALabFIDKID().score(images, images, "x", "", "2048", 10, 10, 4))
    assert weights.INCEPTION.name in message and "is not torch-fidelity's Inception" in message
    torch.save({"features.0.weight": torch.zeros(1)}, models_dir / "metrics" / weights.LPIPS_TRUNKS["alex"].name)
    message = run_fast(lambda: LoRALabLPIPS().score(images, images, "alex", "auto", 4))
    assert "alexnet-owt-7be5be79.pth" in message and "'features.0.weight' has shape (1,)" in message


def test_inside_comfyui_weights_are_looked_up_in_comfyuis_model_folders(tmp_path, monkeypatch, no_network):
    comfy = tmp_path / "ComfyUI" / "models"
    folders = {"clip_vision": [str(comfy / "clip_vision")], "clip": [str(comfy / "text_encoders")]}
    monkeypatch.setitem(sys.modules, "folder_paths", SimpleNamespace(models_dir=str(comfy),
                                                                     get_folder_paths=folders.__getitem__))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert weights.metric_file_folders() == [comfy / "metrics", tmp_path / "torch" / "hub" / "checkpoints"]
    assert weights.clip_folders() == [comfy / "clip_vision", comfy / "text_encoders"]
    (comfy / "clip_vision").mkdir(parents=True)
    (comfy / "clip_vision" / "clip_vision_h.safetensors").write_bytes(b"")
    with pytest.raises(weights.WeightsError, match="is a single file .* Hugging Face folder"):
        weights.find_clip_folder("clip_vision_h.safetensors")
    (comfy / "metrics").mkdir()
    (comfy / "metrics" / weights.INCEPTION.name).write_bytes(b"")
    assert weights.find_weight_file("auto", weights.INCEPTION) == comfy / "metrics" / weights.INCEPTION.name
