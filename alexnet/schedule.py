"""Learning-rate schedules: the paper's plateau rule (Sec. 5), a step schedule, optional linear warm-up.

The learning rate is recomputed before every optimizer step from (fractional epoch, schedule state), so
a resumed run sets exactly the same rates as an uninterrupted one.
"""
import math


class LRSchedule:
    """lr(epoch) = base_lr * warmup(epoch) * decay, where decay depends on the rule:

    - "plateau" (Sec. 5): multiply by `factor` (1/10) once the validation error has not improved for
      more than `patience` epochs (torch's ReduceLROnPlateau rule), at most `max_reductions` (3) times,
      as the paper did by hand.
    - "step": multiply by `factor` every `step_size` epochs (torchvision's recipe: /10 every 30).
    - "constant": no decay.
    Warm-up: linear from 0 over `warmup_epochs` (fractional epochs allowed).
    """

    def __init__(self, cfg, base_lr):
        self.cfg, self.base_lr = cfg, base_lr
        self.reductions = 0       # plateau: how many times the lr was divided
        self.best_error = math.inf
        self.bad_epochs = 0

    def lr_at(self, epoch):
        """Learning rate at fractional epoch `epoch` (0-based: 1.5 = half-way through the second epoch)."""
        c = self.cfg
        warm = min(1.0, (epoch + 1e-12) / c.warmup_epochs) if c.warmup_epochs > 0 else 1.0
        if c.name == "step":
            decay = c.factor ** int(epoch // c.step_size)
        elif c.name == "plateau":
            decay = c.factor ** self.reductions
        else:
            decay = 1.0
        return self.base_lr * warm * decay

    def epoch_end(self, val_error):
        """Record the validation error (percent) of the epoch just finished; True if the lr was reduced."""
        c = self.cfg
        if c.name != "plateau" or not math.isfinite(val_error):
            return False
        if val_error < self.best_error:
            self.best_error, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > c.patience and self.reductions < c.max_reductions:
            self.reductions += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self):
        return {"reductions": self.reductions, "best_error": self.best_error, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.reductions = int(state["reductions"])
        self.best_error = float(state["best_error"])
        self.bad_epochs = int(state["bad_epochs"])


def set_lr(optimizer, lr):
    """Set every parameter group's learning rate to `lr` times the group's "lr_factor" (1 if absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)
