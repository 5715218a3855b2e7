import pytest
import torch

from lictutor import LictutorError, models
from lictutor.checkpoint import load_weights
from lictutor.evaluate import compress_image, decompress_image
from lictutor.models import GenerativeHyperprior, MeanScaleHyperprior, MicrodosingStudent
from lictutor.weight_coding import quantize_weights

N, M = 16, 24


def _chapter4(seed=0):
    torch.manual_seed(seed)
    return MeanScaleHyperprior(N, M).eval()


@pytest.mark.parametrize("cls, args", [(GenerativeHyperprior, {"blocks": 2}), (MicrodosingStudent, {"condition": 4})])
def test_warm_started_from_chapter_4_it_decodes_as_chapter_4_did(cls, args):
    base = _chapter4()
    net = cls(N, M, **args).eval()
    load_weights(net, base.state_dict(), "chapter 4's model", partial=True)  # all but g_s.texture
    missing = [k for k in net.state_dict() if k not in base.state_dict()]
    assert missing and all(k.startswith("g_s.texture.") for k in missing)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x)["x_hat"], base(x)["x_hat"])  # the stack starts as the identity
        out = net.compress(x)
        torch.testing.assert_close(net.decompress(out["strings"], out["shape"])["x_hat"],
                                   base.decompress(out["strings"], out["shape"])["x_hat"])
    rebuilt = cls.from_state_dict(net.state_dict())
    assert type(rebuilt) is cls and rebuilt.state_dict().keys() == net.state_dict().keys()


def test_the_student_is_small_and_its_condition_changes_only_the_decoder():
    teacher = models.create("generative", N=N, M=M, blocks=4)
    student = models.create("microdosing", N=N, M=M, blocks=1, width=8, condition=4)
    stack = lambda m: sum(p.numel() for p in m.g_s.texture.parameters())  # noqa: E731
    assert stack(student) * 4 < stack(teacher)
    for name, p in student.g_s.texture.named_parameters():
        if name != "condition":
            torch.nn.init.normal_(p, std=0.1)  # as after training: the stack does something
    student.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = student(x)
        student.g_s.texture.condition.add_(1.0)  # another subset's vector
        after = student(x)
    assert torch.equal(before["y_hat"], after["y_hat"])  # the encoder and the latents are untouched
    assert not torch.allclose(before["x_hat"], after["x_hat"])
    assert [n for n, _ in student.named_parameters() if "condition" in n] == ["g_s.texture.condition"]


def test_bad_sizes_are_refused():
    with pytest.raises(LictutorError, match="blocks must be a whole number"):
        models.create("generative", N=N, M=M, blocks=0)
    with pytest.raises(LictutorError, match="condition must be a whole number"):
        models.create("microdosing", N=N, M=M, condition=2.5)
    with pytest.raises(LictutorError, match="no 'g_s.texture.head.weight'"):
        GenerativeHyperprior.from_state_dict(_chapter4().state_dict())


def test_a_specialized_students_files_carry_its_condition_to_a_general_decoder():
    torch.manual_seed(3)
    general = models.create("microdosing", N=N, M=M, width=8, condition=4).eval()
    for name, p in general.g_s.texture.named_parameters():
        if name != "condition":
            torch.nn.init.normal_(p, std=0.1)
    specialized = MicrodosingStudent.from_state_dict(general.state_dict()).eval()
    with torch.no_grad():
        specialized.g_s.texture.condition.copy_(torch.tensor([0.9, -0.4, 0.3, 0.25]))  # fitted to a subset
    img = (torch.rand(64, 64, 3) * 255).to(torch.uint8).numpy()
    data = compress_image(specialized, img, "microdosing")
    own = general.g_s.texture.condition.detach().clone()
    decoded = decompress_image(general, data, "microdosing")  # the general decoder, the subset's condition
    assert torch.equal(general.g_s.texture.condition, own)  # its own weights restored
    with torch.no_grad():
        specialized.g_s.texture.condition.copy_(quantize_weights(specialized.sent_weights(), 1 / 64)["g_s.texture.condition"])
    assert (decoded == decompress_image(specialized, compress_image(specialized, img, "microdosing"), "microdosing")).all()
    assert not (decoded == decompress_image(general, compress_image(general, img, "microdosing"), "microdosing")).all()
    silent = models.create("microdosing", N=N, M=M, width=8, condition=4, send=())
    silent.load_state_dict(general.state_dict())
    assert len(compress_image(silent.eval(), img, "microdosing")) < len(data)  # no section: fewer bytes
    with pytest.raises(LictutorError, match="cannot send g_s.nothing"):
        models.create("microdosing", N=N, M=M, send=("g_s.nothing",))
