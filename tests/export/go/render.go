// render: execute an Ollama TEMPLATE with Go's own text/template, the way Ollama does.
//
// stdin:  {"template": "...", "conversations": [[{"role": "user", "content": "..."}, ...], ...]}
// stdout: a JSON list with one rendered string per conversation.
//
// The data mirrors Ollama's template values: .Messages (role/content, system messages
// included), .System (the system messages joined), and the legacy .Prompt/.Response.
// Templates run with missingkey=zero, as in Ollama.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

type Input struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("TEMPLATE").Option("missingkey=zero").Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	out := []string{}
	for _, msgs := range in.Conversations {
		var system []string
		for _, m := range msgs {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var b strings.Builder
		if err := tmpl.Execute(&b, Values{Messages: msgs, System: strings.Join(system, "\n\n")}); err != nil {
			fmt.Fprintln(os.Stderr, "execute:", err)
			os.Exit(1)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "encode:", err)
		os.Exit(1)
	}
}
