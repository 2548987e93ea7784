// A small leveled logger with SGLang's --log-level names. Lines go to stderr so that stdout
// carries only what a script may parse (the ready line).

export const LOG_LEVELS = ["debug", "info", "warning", "error", "critical"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export class Logger {
  private readonly min: number;
  constructor(level: LogLevel = "info", private readonly sink: (line: string) => void = (l) => process.stderr.write(l + "\n")) {
    this.min = LOG_LEVELS.indexOf(level);
  }
  private at(level: LogLevel, msg: string): void {
    if (LOG_LEVELS.indexOf(level) < this.min) return;
    this.sink(`[${new Date().toISOString()}] ${level.toUpperCase()} ${msg}`);
  }
  debug(msg: string): void {
    this.at("debug", msg);
  }
  info(msg: string): void {
    this.at("info", msg);
  }
  warn(msg: string): void {
    this.at("warning", msg);
  }
  error(msg: string): void {
    this.at("error", msg);
  }
}
