"""The scoring service (`limaml serve`): ranks a member's candidate items over HTTP with the
member's meta embedding from the Feast online store and the active model's global block."""
