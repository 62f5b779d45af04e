// The dashboard's shell: sign-in, the hash router (#/, #/tasks, #/task/<id>, #/dead,
// #/deliveries, #/workers, #/limits), the status line and the live indicator.

import { key, signIn, signOut, get } from "/ui/api.js";
import * as pages from "/ui/pages.js";
import { task } from "/ui/task.js";

const $ = (id) => document.getElementById(id);
let leaving = null;

/** Shows `text` on the status line (an error in red). */
function say(text, error) {
  const m = $("message");
  m.textContent = text || "";
  m.className = error ? "error" : "";
}

/** The page for the current hash, and its argument. */
function route() {
  const path = (location.hash.replace(/^#/, "") || "/").split("?")[0];
  const m = path.match(/^\/task\/(.+)$/);
  if (m) return [(root, ctx) => task(root, ctx, decodeURIComponent(m[1])), null];
  const table = {
    "/": pages.overview, "/tasks": pages.tasks, "/dead": pages.dead,
    "/deliveries": pages.deliveries, "/workers": pages.workers, "/limits": pages.limits,
  };
  return [table[path] || pages.overview, `#${path}`];
}

/** Renders the current page (ending the previous page's live feed). */
async function show() {
  if (leaving) leaving.abort();
  leaving = new AbortController();
  const signedIn = Boolean(key());
  $("signin").hidden = signedIn;
  $("nav").hidden = !signedIn;
  const root = $("page");
  root.replaceChildren();
  if (!signedIn) { $("signin-key").focus(); return; }
  const [render, current] = route();
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.getAttribute("href") === current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  // The indicator belongs to pages with a live feed, and only while they are shown.
  const signal = leaving.signal;
  $("live").hidden = true;
  const ctx = { signal, say, reload: show, live: (on) => { if (!signal.aborted) live(on); } };
  say("");
  try {
    await render(root, ctx);
  } catch (e) {
    if (e.status === 401) { signOut(); say("That key was refused; sign in again.", true); show(); return; }
    say(e.message, true);
  }
}

/** The live-feed indicator. */
function live(on) {
  const l = $("live");
  l.hidden = false;
  l.textContent = on ? "live" : "offline";
  l.classList.toggle("on", on);
}

/** Checks a key with one cheap call before keeping it. */
async function submit(event) {
  event.preventDefault();
  const input = $("signin-key");
  signIn(input.value.trim());
  input.value = "";
  try {
    await get("/api/overview");
    $("signin-error").textContent = "";
    await show();
    $("main").focus();
  } catch (e) {
    signOut();
    $("signin-error").textContent = e.status === 401 ? "This key is not accepted." : e.message;
  }
}

$("signin").addEventListener("submit", submit);
$("signout").addEventListener("click", () => { signOut(); if (leaving) leaving.abort(); show(); });
window.addEventListener("hashchange", show);
show();
