// Text from agents, reviewers and remotes on its way to a terminal.

/**
 * Replaces every C0/C1 control character (terminal escapes, line breaks that fake a row) with
 * `?`, so untrusted text prints as one inert line.
 */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex -- finding control characters is the point
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}
