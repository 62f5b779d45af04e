//! The deliveries parts of the dashboard in headless Chromium (see `harness::browser`), against a
//! live relay and a real receiver: a destination a 410 disabled is re-enabled from the
//! deliveries page after a confirmation, "Replay since…" queues its dead delivery again, the
//! task page shows that delivery with its attempts, and the dead letters page pages through
//! "Next page", and at phone width nothing scrolls sideways. Screenshots go to
//! `target/screenshots/`.

use crate::harness::app::ADMIN_KEY;
use crate::harness::browser::{Browser, DESKTOP, PATIENCE, PHONE};
use crate::harness::receiver::Answer;
use crate::harness::{eventually, TestApp};
use fantoccini::key::Key;
use reqwest::Method;
use serde_json::json;

/// Signs in with `key` and waits for the overview.
async fn sign_in(browser: &Browser, app: &TestApp, key: &str) {
    browser.open(&format!("{}/", app.url)).await;
    let field = browser
        .find("the key field", "[data-test=signin-key]")
        .await;
    let enter = char::from(Key::Enter);
    field.send_keys(&format!("{key}{enter}")).await.unwrap();
    browser
        .find("the overview", "[data-test=page-overview]")
        .await;
}

/// Clicks the element matching `css` (waiting for it first); `what` names it.
async fn click(browser: &Browser, what: &str, css: &str) {
    let e = browser.find(what, css).await;
    e.click()
        .await
        .unwrap_or_else(|err| panic!("click {what}: {err}"));
}

/// Whether the relay's destination `key` is disabled, as `GET /api/destinations` says.
async fn disabled(app: &TestApp, key: &str) -> bool {
    let (_, list) = app.call(app.req(Method::GET, "/api/destinations")).await;
    list.as_array()
        .unwrap()
        .iter()
        .any(|d| d["key"] == key && d["disabled"] == true)
}

#[tokio::test]
async fn a_destination_a_410_disabled_is_re_enabled_and_replayed_since_a_time_from_the_deliveries_page(
) {
    // Arrange: a named webhook answering 410 Gone, so its first delivery dies and disables it.
    let app = TestApp::spawn().await;
    let (hook, _relay) = app
        .relay_to_named_hook("gone", Answer::status(410).body("this hook was removed"))
        .await;
    let task = app.task_notifying("gone away", json!(["gone"])).await;
    let dead = app
        .wait_deliveries("status=dead&destination=gone", 1, PATIENCE)
        .await;
    let id = dead[0]["job"]["id"].as_str().unwrap().to_string();
    assert!(disabled(&app, "n_gone").await);
    let browser = Browser::start(DESKTOP).await;
    sign_in(&browser, &app, ADMIN_KEY).await;
    browser.open(&format!("{}/#/deliveries", app.url)).await;

    // Act: re-enable it.
    let enable = "[data-test=destinations-table] tr[data-id=n_gone] [data-test=destination-enable]";
    browser
        .text_until("the reason shown", "[data-test=destinations-table]", |t| {
            t.contains("410")
        })
        .await;
    browser.screenshot("deliveries-disabled-destination").await;
    click(&browser, "the Re-enable button", enable).await;
    browser.confirm("Re-enable", true).await;
    eventually("the destination enabled", PATIENCE, || async {
        (!disabled(&app, "n_gone").await).then_some(())
    })
    .await;
    // The page, read again: n_gone is configured in the relay only, so it is no longer listed.
    browser
        .text_until(
            "the page read again",
            "[data-test=destinations-table]",
            |t| t.contains("Nothing here"),
        )
        .await;

    // Act: replay its dead deliveries since a time long ago.
    hook.answer_from_now_on(Answer::status(200));
    browser
        .find("the page again", "[data-test=replay-since-form]")
        .await;
    let fill = r#"
        document.querySelector('[data-test=replay-destination]').value = 'gone';
        document.querySelector('[data-test=replay-since]').value = '2020-01-01T00:00:00';"#;
    browser.js(fill, vec![]).await;
    click(&browser, "Replay since…", "[data-test=replay-since-submit]").await;
    browser
        .confirm("Replay every dead delivery to gone", true)
        .await;
    let said = browser
        .text_until("the replay reported", "[data-test=message]", |t| {
            t.starts_with("Queued")
        })
        .await;
    let hits = hook.wait_for(2, PATIENCE).await;

    // Assert
    assert_eq!(said, "Queued 1 again.");
    assert_eq!(hits[1].webhook_id(), id, "the dead delivery, sent again");
    let record = app.wait_delivered(&id, PATIENCE).await;
    assert_eq!(record["attempts"].as_array().unwrap().len(), 2);

    // Act: the task page lists the delivery with both attempts.
    browser
        .open(&format!("{}/#/task/{}", app.url, task.id))
        .await;
    let row = format!("[data-test=task-deliveries] tr[data-id=\"{id}\"]");
    browser.find("the delivery on the task page", &row).await;
    let open =
        "document.querySelectorAll('[data-test=delivery-attempts]').forEach((d) => d.open = true);";
    browser.js(open, vec![]).await;
    let shown = browser
        .text_until("its attempts", &row, |t| t.contains("200"))
        .await;
    browser.screenshot("task-deliveries").await;

    // Assert
    assert!(
        shown.contains("410") && shown.contains("this hook was removed"),
        "{shown}"
    );
    assert!(shown.contains("delivered"), "{shown}");
    browser.close().await;
}

#[tokio::test]
async fn the_dead_letters_page_pages_with_next_page_links() {
    // Arrange: 51 dead letters (tasks copied to the dead-letter stream, as a worker does); the
    // page shows 50.
    let app = TestApp::spawn().await;
    let ids = app.seed_dead_letters(51).await;
    let browser = Browser::start(DESKTOP).await;
    sign_in(&browser, &app, ADMIN_KEY).await;
    browser.open(&format!("{}/#/dead", app.url)).await;
    let first = format!("[data-test=dead-table] tr[data-id=\"{}\"]", ids[0]);
    browser.find("the first dead letter", &first).await;

    // Act
    click(&browser, "Next page", "[data-test=dead-next]").await;
    let last = format!("[data-test=dead-table] tr[data-id=\"{}\"]", ids[50]);
    browser.find("the 51st dead letter", &last).await;

    // Assert: one row on the second page, and no further page.
    let rows = browser
        .js(
            "return document.querySelectorAll('[data-test=dead-table] tbody tr').length;",
            vec![],
        )
        .await;
    assert_eq!(rows, 1);
    assert!(browser.text_of("[data-test=dead-next]").await.is_none());
    assert!(browser.text_of("[data-test=dead-first]").await.is_some());
    browser.close().await;
}

/// `[scrollWidth, innerWidth]` of the page, with every attempt list opened first.
const WIDTHS: &str = r#"
    document.querySelectorAll('[data-test=delivery-attempts]').forEach((d) => d.open = true);
    return [document.scrollingElement.scrollWidth, window.innerWidth];"#;

#[tokio::test]
async fn at_phone_width_the_deliveries_and_task_pages_with_long_bodies_do_not_scroll_sideways() {
    // Arrange: a disabled destination whose attempt answered a long body without spaces.
    let app = TestApp::spawn().await;
    let (_hook, _relay) = app
        .relay_to_named_hook("gone", Answer::status(410).body("x".repeat(5000)))
        .await;
    let task = app.task_notifying("gone away", json!(["gone"])).await;
    app.wait_deliveries("status=dead&destination=gone", 1, PATIENCE)
        .await;
    let browser = Browser::start(PHONE).await;
    sign_in(&browser, &app, ADMIN_KEY).await;

    for (hash, shown, shot) in [
        (
            "#/deliveries",
            "[data-test=destination-enable]",
            "phone-deliveries-destinations",
        ),
        (
            &format!("#/task/{}", task.id) as &str,
            "[data-test=task-deliveries] [data-test=delivery-attempts]",
            "phone-task-deliveries",
        ),
    ] {
        // Act
        browser.open(&format!("{}/{hash}", app.url)).await;
        browser.find(hash, shown).await;
        let sizes = browser.js(WIDTHS, vec![]).await;
        browser.screenshot(shot).await;

        // Assert
        let (scroll, inner) = (sizes[0].as_f64().unwrap(), sizes[1].as_f64().unwrap());
        assert!(scroll <= inner, "{hash} scrolls sideways: {sizes}");
    }
    browser.close().await;
}
