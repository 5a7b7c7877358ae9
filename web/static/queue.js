// Refresh the queue without a reload: fetch the same filtered rows as HTML from the server and swap them in.
(function () {
  "use strict";
  var live = document.getElementById("queue-live");
  var stamp = document.getElementById("queue-updated");
  if (!live) { return; }
  var every = Math.max(parseInt(live.getAttribute("data-refresh"), 10) || 15, 5) * 1000;
  function refresh() {
    fetch(live.getAttribute("data-rows"), {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (answer) {
        if (answer.status === 401 || answer.redirected) { stamp.textContent = "Signed out: reload to sign in again"; return null; }
        if (!answer.ok) { throw new Error(String(answer.status)); }
        return answer.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        var focused = document.activeElement && live.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
        live.innerHTML = html;
        if (focused) {
          var again = live.querySelector('a[href="' + focused.replace(/"/g, "") + '"]');
          if (again) { again.focus(); }
        }
        stamp.textContent = "Updated " + new Date().toISOString().replace(/\.\d+Z$/, "Z");
        setTimeout(refresh, every);
      })
      .catch(function () { stamp.textContent = "Could not refresh; retrying"; setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
}());
