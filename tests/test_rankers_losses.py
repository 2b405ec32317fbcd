"""GeMS loss terms on hand-made inputs, under both conventions, and the model's structure and hyper-parameters."""

import math

import pytest
import torch
import torch.nn.functional as F

from slate_rl.errors import SlateRLError
from slate_rl.rankers.gems import GeMS
from slate_rl.rankers.losses import item_cross_entropy, kl_to_standard_normal, reparameterise


def test_reparameterisation_std_conventions():
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[math.log(4.0), 0.0]])
    noise = torch.tensor([[1.0, -2.0]])
    # reference (G1): std = exp(logvar) = 4 and 1
    assert torch.allclose(reparameterise(mu, logvar, noise), torch.tensor([[4.5, -3.0]]))
    # standard: std = exp(logvar / 2) = 2 and 1
    assert torch.allclose(reparameterise(mu, logvar, noise, "standard"), torch.tensor([[2.5, -3.0]]))


def test_kl_conventions_on_hand_computed_values():
    mu = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # per entry 0.5 * (exp(lv) - lv + mu^2 - 1): [[0.5, 0.5 * (1 - ln 2)], [0, 2]]
    entries = torch.tensor([[0.5, 0.5 * (1.0 - math.log(2.0))], [0.0, 2.0]])
    assert kl_to_standard_normal(mu, logvar) == pytest.approx(float(entries.mean()), rel=1e-6)  # G2: mean of 4
    assert kl_to_standard_normal(mu, logvar, "standard") == pytest.approx(float(entries.sum(1).mean()), rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(3, 5), torch.zeros(3, 5)) == 0.0


def test_unknown_convention_is_rejected():
    with pytest.raises(SlateRLError, match="loss_convention"):
        kl_to_standard_normal(torch.zeros(1, 1), torch.zeros(1, 1), "beta")


def test_item_cross_entropy_hand_made_and_against_autograd():
    # two slots, three items, D = 2: logits slot 0 = (1, 0, 0) -> CE(target 0) = log(e + 2) - 1
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    vectors = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 2])
    expected = ((math.log(math.e + 2) - 1.0) + math.log(3.0)) / 2
    assert float(item_cross_entropy(vectors, table, targets)) == pytest.approx(expected, rel=1e-6)

    generator = torch.Generator().manual_seed(0)
    vectors = (3 * torch.randn(600, 20, generator=generator)).requires_grad_()  # several blocks, one partial
    table = torch.randn(1000, 20, generator=generator).requires_grad_()
    targets = torch.randint(0, 1000, (600,), generator=generator)
    fused = item_cross_entropy(vectors, table, targets)
    (fused_grad,) = torch.autograd.grad(2.0 * fused, vectors)
    plain = F.cross_entropy(vectors @ table.detach().T, targets)
    (plain_grad,) = torch.autograd.grad(2.0 * plain, vectors)
    assert torch.allclose(fused, plain, atol=1e-5)
    assert torch.allclose(fused_grad, plain_grad, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(item_cross_entropy(vectors, table, targets), plain, atol=1e-5)
    fused = item_cross_entropy(vectors, table, targets)
    assert torch.autograd.grad(fused, table, allow_unused=True) == (None,)  # the table is detached: G5


def test_item_cross_entropy_with_confident_logits():
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(1000, 20, generator=generator)
    vectors = (40 * torch.randn(300, 20, generator=generator)).requires_grad_()  # logit gaps of several hundred
    targets = torch.randint(0, 1000, (300,), generator=generator)
    (fused_grad,) = torch.autograd.grad(item_cross_entropy(vectors, table, targets), vectors)
    plain = F.cross_entropy(vectors @ table.T, targets)
    (plain_grad,) = torch.autograd.grad(plain, vectors)
    assert torch.allclose(item_cross_entropy(vectors, table, targets), plain, rtol=1e-5)
    assert torch.allclose(fused_grad, plain_grad, atol=1e-6)


def test_training_loss_combines_terms_with_weights():
    model = GeMS(lambda_kl=0.25, lambda_click=2.0, seed=1)
    slates = torch.randint(0, 1000, (8, 10), generator=torch.Generator().manual_seed(1))
    clicks = (torch.arange(80).view(8, 10) % 3 == 0).float()
    terms = model.loss_terms(slates, clicks)
    combined = terms["slate_loss"] + 2.0 * terms["click_loss"] + 0.25 * terms["kl_loss"]
    assert torch.allclose(terms["loss"], combined)
    val = model.evaluation_terms(slates, clicks)
    mu, logvar = model.encode(slates, clicks)
    slot_vectors, click_logits = model.decode(mu)
    logits = model.item_logits(slot_vectors)
    assert torch.allclose(val["slate_loss"], F.cross_entropy(logits.view(-1, 1000), slates.view(-1)))
    assert torch.allclose(val["click_loss"], F.binary_cross_entropy_with_logits(click_logits, clicks))
    assert torch.allclose(val["kl_loss"], kl_to_standard_normal(mu, logvar))
    assert float(val["slot_accuracy"]) == pytest.approx(float((logits.argmax(-1) == slates).float().mean()))
    assert float(val["click_accuracy"]) == pytest.approx(float(((click_logits > 0).float() == clicks).float().mean()))


def test_module_uses_the_chosen_convention_and_rebuilds_from_its_hyperparameters():
    model = GeMS(loss_convention="standard", latent_dim=4, seed=3)
    slates = torch.randint(0, 1000, (5, 10), generator=torch.Generator().manual_seed(3))
    clicks = torch.ones(5, 10)
    mu, logvar = model.encode(slates, clicks)
    assert torch.allclose(
        model.evaluation_terms(slates, clicks)["kl_loss"], kl_to_standard_normal(mu, logvar, "standard")
    )
    rebuilt = GeMS(**dict(model.hparams))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.encode(slates, clicks)[0], mu)


def test_slate_loss_does_not_train_the_item_table_through_the_decoder():
    model = GeMS(seed=2)
    slates = torch.randint(0, 1000, (4, 10), generator=torch.Generator().manual_seed(2))
    clicks = torch.zeros(4, 10)
    mu, _ = model.encode(slates, clicks)
    slot_vectors, _ = model.decode(mu.detach())  # cut the encoder path: only the decoder path is left
    item_cross_entropy(slot_vectors.view(-1, 20), model.item_embeddings.weight, slates.view(-1)).backward()
    assert model.item_embeddings.weight.grad is None
    assert model.slate_head.weight.grad is not None


def test_architecture_matches_the_reference():
    model = GeMS()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model) == 523_570
    assert (
        count(model.encoder),
        count(model.decoder),
        count(model.slate_head),
        count(model.click_head),
        count(model.item_embeddings),
    ) == (255_808, 140_032, 102_600, 5_130, 20_000)
    assert isinstance(model.decoder[-1], torch.nn.ReLU)  # ReLU after the last hidden layer
    assert model.hparams.latent_dim == 32 and model.hparams.lambda_click == 0.5 and model.hparams.lr == 1e-3


def test_initialisation_follows_pytorch_defaults():
    model = GeMS(seed=9).requires_grad_(False)
    assert abs(float(model.item_embeddings.weight.std()) - 1.0) < 0.02  # N(0, 1) "scratch" table
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            bound = layer.in_features**-0.5
            assert float(layer.bias.abs().max()) <= bound
            assert 0.95 * bound < float(layer.weight.abs().max()) <= bound  # uniform over the whole range


def test_seed_fixes_initialisation_without_touching_the_global_rng():
    state = torch.random.get_rng_state()
    first, second = GeMS(seed=7), GeMS(seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))
    assert not torch.equal(GeMS(seed=8).encoder[0].weight, first.encoder[0].weight)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(latent_dim=0), "latent_dim"),
        (dict(lambda_kl=-1.0), "lambda_kl"),
        (dict(lambda_click=float("nan")), "lambda_click"),
        (dict(lambda_prior=-0.1), "lambda_prior"),
        (dict(lr=0.0), "lr"),
        (dict(decoder_hidden=()), "decoder_hidden"),
        (dict(loss_convention="x"), "loss_convention"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, word):
    with pytest.raises(SlateRLError, match=word):
        GeMS(**kwargs)
