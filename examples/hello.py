"""The smallest htagweb app: an old-style component, wrapped into a Tag.App."""

from htag import Tag


class App(Tag.div):
    def init(self) -> None:
        self.add(Tag.h1("Hello from htagweb"))
        self.add(Tag.p("Each visitor gets their own process."))


if __name__ == "__main__":
    from htagweb import WebServer

    WebServer(App).run()
