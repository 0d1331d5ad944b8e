//! The command (MDA) destination: the message goes to the standard input
//! of `/bin/sh -c command`; exit status 0 means delivered.

use std::io::{self, BufWriter, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

use super::transcode::CrlfToLf;
use super::{BUF, Delivery, MessageInfo};

write_through_writer!(CommandDelivery);

/// Delivery to a command's standard input; exit status 0 means delivered.
pub(crate) struct CommandDelivery {
    child: Option<Child>,
    writer: Option<CrlfToLf<BufWriter<ChildStdin>>>,
    command: String,
}

impl CommandDelivery {
    /// Start `/bin/sh -c command`, with `info` in its environment. Its
    /// standard output goes to our standard error, so that standard output
    /// stays for summaries.
    pub(crate) fn begin(command: &str, info: &MessageInfo<'_>) -> io::Result<Self> {
        let stdout = match io::stderr().as_fd_clone() {
            Some(fd) => Stdio::from(fd),
            None => Stdio::null(),
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(command);
        for var in [
            "POSTOFFICE_FETCH_ACCOUNT",
            "POSTOFFICE_FETCH_UIDL",
            "POSTOFFICE_FETCH_REPEAT",
        ] {
            cmd.env_remove(var);
        }
        if !info.account.is_empty() {
            cmd.env("POSTOFFICE_FETCH_ACCOUNT", info.account);
        }
        if let Some(uid) = info.uid {
            cmd.env("POSTOFFICE_FETCH_UIDL", uid);
        }
        if info.repeat {
            cmd.env("POSTOFFICE_FETCH_REPEAT", "1");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {command:?}: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin pipe"))?;
        Ok(CommandDelivery {
            child: Some(child),
            writer: Some(CrlfToLf::new(BufWriter::with_capacity(BUF, stdin))),
            command: command.to_string(),
        })
    }

    fn reap(&mut self, kill: bool) -> io::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("already reaped"))?;
        if kill {
            let _ = child.kill();
        }
        child.wait()
    }
}

trait AsFdClone {
    fn as_fd_clone(&self) -> Option<std::os::fd::OwnedFd>;
}

impl AsFdClone for io::Stderr {
    fn as_fd_clone(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned().ok()
    }
}

impl Delivery for CommandDelivery {
    /// Push the whole message into the command's standard input, leaving
    /// it open: the command has every byte but not yet the end of input.
    /// The receipt (`command`) says only that: a command cannot be asked
    /// afterwards whether it delivered.
    fn prepare(&mut self) -> io::Result<Option<String>> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("finished"))?;
        if let Err(e) = w.end().and_then(|()| w.get_mut().flush()) {
            // Most likely the command exited early: report it as commit
            // would.
            self.writer.take();
            return Err(match self.reap(false) {
                Ok(status) if status.success() => io::Error::new(
                    e.kind(),
                    format!("{:?} did not read the whole message: {e}", self.command),
                ),
                Ok(status) => io::Error::other(format!("{:?} failed ({status})", self.command)),
                Err(_) => e,
            });
        }
        Ok(Some("command".into()))
    }

    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("finished"))?;
        let written = w
            .finish()
            .and_then(|bw| bw.into_inner().map_err(|e| e.into_error()));
        // Closing stdin (dropping it) lets the command see end of input.
        let write_error = written.err();
        let status = self.reap(false)?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "{:?} failed ({status})",
                self.command
            )));
        }
        match write_error {
            // The command succeeded without reading everything: not a
            // complete delivery.
            Some(e) => Err(io::Error::new(
                e.kind(),
                format!("{:?} did not read the whole message: {e}", self.command),
            )),
            None => Ok(()),
        }
    }

    fn abort(mut self: Box<Self>) {
        self.writer.take();
        let _ = self.reap(true);
    }
}

impl Drop for CommandDelivery {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.writer.take();
            let _ = self.reap(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn command_exit_status_decides() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let info = MessageInfo::default();
        let mut d =
            Box::new(CommandDelivery::begin(&format!("cat > '{}'", out.display()), &info).unwrap());
        d.write_all(b"x\r\ny\r\n").unwrap();
        d.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"x\ny\n");
        let mut d = Box::new(CommandDelivery::begin("cat >/dev/null; exit 3", &info).unwrap());
        d.write_all(b"x\r\n").unwrap();
        assert!(
            d.commit()
                .unwrap_err()
                .to_string()
                .contains("exit status: 3")
        );
    }

    #[test]
    fn prepare_hands_over_everything_and_the_environment_says_which_message() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let env = dir.path().join("env");
        // The command copies its input and writes down its environment,
        // then waits for end of input before exiting.
        let cmd = format!(
            "head -c 4 > '{}'; echo \"$POSTOFFICE_FETCH_ACCOUNT $POSTOFFICE_FETCH_UIDL ${{POSTOFFICE_FETCH_REPEAT:-0}}\" > '{}'; cat >/dev/null",
            out.display(),
            env.display()
        );
        let info = MessageInfo {
            account: "work",
            uid: Some("uid-7"),
            repeat: true,
        };
        let mut d = Box::new(CommandDelivery::begin(&cmd, &info).unwrap());
        d.write_all(b"x\r\ny\r\n").unwrap();
        assert_eq!(d.prepare().unwrap().as_deref(), Some("command"));
        // Before the commit (stdin still open) the command has it all.
        for _ in 0..500 {
            if std::fs::read_to_string(&env).is_ok_and(|t| t.ends_with('\n')) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(std::fs::read(&out).unwrap(), b"x\ny\n");
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "work uid-7 1\n");
        d.commit().unwrap();

        let mut d = Box::new(
            CommandDelivery::begin(
                &format!("echo \"${{POSTOFFICE_FETCH_UIDL:-none}} ${{POSTOFFICE_FETCH_REPEAT:-0}}\" > '{}'; cat >/dev/null", env.display()),
                &MessageInfo::default(),
            )
            .unwrap(),
        );
        d.write_all(b"x\r\n").unwrap();
        d.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "none 0\n");
    }
}
