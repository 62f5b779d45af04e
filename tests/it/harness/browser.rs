//! `Browser`: headless Chromium driven over WebDriver, for the dashboard's browser tests
//! (tests/it/browser.rs). Each browser has its own `chromedriver` on a loopback port it picks
//! itself (in a process group of its own, with Chromium under it) and its own throw-away profile; `Drop`
//! SIGKILLs the group. Chromium and chromedriver are Debian's packages (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`, or `$CHROMIUM` / `$CHROMEDRIVER`), which
//! `scripts/ensure-chromium.sh` installs; without them every browser test fails, naming it.

use super::dies_with_test;
use super::eventually;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a wait for something on the page may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// A desktop window.
pub const DESKTOP: Screen = Screen {
    width: 1280,
    height: 900,
    phone: false,
};
/// A phone's screen (Chromium's windows are never narrower than 500 px, so a phone is emulated:
/// a mobile viewport of this size).
pub const PHONE: Screen = Screen {
    width: 390,
    height: 844,
    phone: true,
};

/// The size of the page's viewport, in CSS pixels.
#[derive(Debug, Clone, Copy)]
pub struct Screen {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Emulate a phone (mobile viewport, touch) instead of sizing a desktop window.
    pub phone: bool,
}

/// A headless Chromium session and the chromedriver that runs it.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// `$name` if set, else `default`; panics with the install hint when it is not a file.
fn binary(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found (${var}): the browser tests need headless Chromium and chromedriver; \
         run scripts/ensure-chromium.sh (apt-get install chromium chromium-driver)",
        path.display()
    );
    path
}

/// The port a chromedriver started with `--port=0` says in `log` it listens on ("ChromeDriver
/// was started successfully on port N"), once it has said so.
fn driver_port(log: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    let (_, rest) = text.split_once("started successfully on port ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The Chromium flags of every session: headless, no sandbox (root in CI), nothing that calls
/// home, a fresh profile in `profile`, a window of `width` × `height`.
fn chromium_args(profile: &Path, width: u32, height: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--window-size={width},{height}"));
    args
}

impl Browser {
    /// Starts chromedriver and a headless Chromium showing pages on `screen` (see [`DESKTOP`],
    /// [`PHONE`]).
    pub async fn start(screen: Screen) -> Self {
        let chromium = binary("CHROMIUM", "/usr/bin/chromium");
        let chromedriver = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
        let profile = tempfile::tempdir().expect("browser profile dir");
        let log = profile.path().join("chromedriver.log");
        // Port 0: chromedriver binds a free port itself and logs which; a port probed here
        // first could be taken by another test before chromedriver bound it.
        let driver = dies_with_test(&mut Command::new(&chromedriver))
            .arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", chromedriver.display()));
        let port = eventually(
            &format!("chromedriver to say its port in {}", log.display()),
            Duration::from_secs(20),
            || async { driver_port(&log) },
        )
        .await;
        let url = format!("http://127.0.0.1:{port}");
        let browser_profile = profile.path().join("chromium");
        let mut options = json!({
            "binary": chromium,
            "args": chromium_args(&browser_profile, screen.width, screen.height),
        });
        if screen.phone {
            options["mobileEmulation"] = json!({"deviceMetrics": {
                "width": screen.width, "height": screen.height,
                "pixelRatio": 1, "mobile": true, "touch": true,
            }});
        }
        let caps = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": options,
        });
        let caps = caps.as_object().expect("an object").clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = eventually(
            &format!(
                "chromedriver on {url} to start a Chromium session (log: {})",
                log.display()
            ),
            Duration::from_secs(20),
            || {
                let (caps, connector, url) = (caps.clone(), connector.clone(), url.clone());
                async move {
                    ClientBuilder::new(connector)
                        .capabilities(caps)
                        .connect(&url)
                        .await
                        .ok()
                }
            },
        )
        .await;
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Opens `url` (the dashboard, `<base>/#/…`).
    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page and returns its
    /// value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits (at most [`PATIENCE`]) until an element matches `css`, naming `what` on timeout.
    pub async fn find(&self, what: &str, css: &str) -> Element {
        eventually(
            &format!("{what} (`{css}`) on the page"),
            PATIENCE,
            || async { self.client.find(Locator::Css(css)).await.ok() },
        )
        .await
    }

    /// Waits (at most [`PATIENCE`]) until the text of the first element matching `css` passes
    /// `ok`, and returns it; `what` names the wait on timeout.
    pub async fn text_until(&self, what: &str, css: &str, ok: impl Fn(&str) -> bool) -> String {
        eventually(&format!("{what} (`{css}`)"), PATIENCE, || async {
            let text = self.text_of(css).await?;
            ok(&text).then_some(text)
        })
        .await
    }

    /// The rendered text of the first element matching `css`, if there is one.
    pub async fn text_of(&self, css: &str) -> Option<String> {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
                vec![json!(css)],
            )
            .await;
        v.as_str().map(str::to_string)
    }

    /// Waits for the confirmation dialog, checks its text contains `question`, and accepts it
    /// (`accept`) or dismisses it.
    pub async fn confirm(&self, question: &str, accept: bool) {
        let text = eventually(
            &format!("a confirmation dialog asking {question:?}"),
            PATIENCE,
            || async { self.client.get_alert_text().await.ok() },
        )
        .await;
        assert!(text.contains(question), "the dialog asks {text:?}");
        let answered = if accept {
            self.client.accept_alert().await
        } else {
            self.client.dismiss_alert().await
        };
        answered.expect("answer the dialog");
    }

    /// Saves a screenshot of the window as `target/screenshots/<name>.png` (a CI artifact).
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("create target/screenshots");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Ends the session (Chromium quits), then the chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// `$CARGO_TARGET_DIR/screenshots`, else `target/screenshots` beside Cargo.toml.
fn screenshots_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
            PathBuf::from,
        )
        .join("screenshots")
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
