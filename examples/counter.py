"""A counter with htag's reactive State, served one process per user."""

from htag import State, Tag


class App(Tag.App):
    def init(self) -> None:
        self.count = State(0)
        with Tag.div(_class="counter"):
            Tag.h1("htagweb counter")
            Tag.p(lambda: f"Count: {self.count.value}", _id="count")
            Tag.button("+1", _id="inc", _onclick=self.increment)

    def increment(self, event) -> None:
        self.count.value += 1


if __name__ == "__main__":
    from htagweb import WebServerWS

    WebServerWS(App).run()
