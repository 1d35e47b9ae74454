"""Languages: detecting the user's language and the localised texts of the framework itself.

Detection uses lingua (``lingua-language-detector``), restricted to the configured languages so it
stays fast and small. Short texts are unreliable to detect, so for them the platform's locale hint
wins, then the conversation's previous language, then the configured default — except for scripts
that name their language unambiguously (Chinese, Japanese, Cyrillic with high confidence).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

#: ISO 639-1 code -> (English name, native name). Answers can be in any of these.
LANGUAGE_NAMES: dict[str, tuple[str, str]] = {
    "en": ("English", "English"),
    "pt": ("Portuguese", "Português"),
    "es": ("Spanish", "Español"),
    "fr": ("French", "Français"),
    "de": ("German", "Deutsch"),
    "zh": ("Chinese", "中文"),
    "ru": ("Russian", "Русский"),
    "ja": ("Japanese", "日本語"),
    "it": ("Italian", "Italiano"),
    "nl": ("Dutch", "Nederlands"),
    "pl": ("Polish", "Polski"),
    "uk": ("Ukrainian", "Українська"),
    "ko": ("Korean", "한국어"),
    "tr": ("Turkish", "Türkçe"),
    "ar": ("Arabic", "العربية"),
    "hi": ("Hindi", "हिन्दी"),
    "vi": ("Vietnamese", "Tiếng Việt"),
    "id": ("Indonesian", "Bahasa Indonesia"),
    "sv": ("Swedish", "Svenska"),
    "cs": ("Czech", "Čeština"),
}

#: Languages whose framework texts are translated; others fall back to English texts
#: (the model still answers in the user's language).
UI_LANGUAGES = ("en", "pt", "es", "fr", "de", "zh", "ru", "ja")

TEXTS: dict[str, dict[str, str]] = {
    "help": {
        "en": "Send me a question, a photo or a file and I will answer.\nCommands:\n/start — greeting\n/help — this help\n/reset — start a fresh conversation\n/persona NAME — switch persona ({personas})\n/lang CODE — answer in a language ({languages}); /lang auto to detect it\n/export csv|json — the tables of my last answer as a file\n/human — talk to a person\n/bot — back to the assistant",
        "pt": "Envie uma pergunta, uma foto ou um arquivo e eu respondo.\nComandos:\n/start — saudação\n/help — esta ajuda\n/reset — começar uma conversa nova\n/persona NOME — trocar de persona ({personas})\n/lang CÓDIGO — responder num idioma ({languages}); /lang auto para detectar\n/export csv|json — as tabelas da minha última resposta como arquivo\n/human — falar com uma pessoa\n/bot — voltar ao assistente",
        "es": "Envíame una pregunta, una foto o un archivo y te responderé.\nComandos:\n/start — saludo\n/help — esta ayuda\n/reset — empezar una conversación nueva\n/persona NOMBRE — cambiar de persona ({personas})\n/lang CÓDIGO — responder en un idioma ({languages}); /lang auto para detectarlo\n/export csv|json — las tablas de mi última respuesta como archivo\n/human — hablar con una persona\n/bot — volver al asistente",
        "fr": "Envoyez-moi une question, une photo ou un fichier et je vous répondrai.\nCommandes :\n/start — accueil\n/help — cette aide\n/reset — recommencer une conversation\n/persona NOM — changer de persona ({personas})\n/lang CODE — répondre dans une langue ({languages}) ; /lang auto pour la détecter\n/export csv|json — les tableaux de ma dernière réponse en fichier\n/human — parler à une personne\n/bot — revenir à l'assistant",
        "de": "Schicken Sie mir eine Frage, ein Foto oder eine Datei, und ich antworte.\nBefehle:\n/start — Begrüßung\n/help — diese Hilfe\n/reset — neues Gespräch beginnen\n/persona NAME — Persona wechseln ({personas})\n/lang CODE — in einer Sprache antworten ({languages}); /lang auto zum Erkennen\n/export csv|json — die Tabellen meiner letzten Antwort als Datei\n/human — mit einem Menschen sprechen\n/bot — zurück zum Assistenten",
        "zh": "请发送问题、照片或文件，我会回答。\n命令：\n/start — 问候\n/help — 帮助\n/reset — 开始新的对话\n/persona 名称 — 切换角色（{personas}）\n/lang 代码 — 指定回答语言（{languages}）；/lang auto 自动检测\n/export csv|json — 将上一条回答中的表格导出为文件\n/human — 转人工客服\n/bot — 回到智能助手",
        "ru": "Пришлите вопрос, фото или файл — я отвечу.\nКоманды:\n/start — приветствие\n/help — эта справка\n/reset — начать разговор заново\n/persona ИМЯ — сменить персону ({personas})\n/lang КОД — отвечать на языке ({languages}); /lang auto — определять автоматически\n/export csv|json — таблицы последнего ответа файлом\n/human — связаться с человеком\n/bot — вернуться к ассистенту",
        "ja": "質問、写真、ファイルを送ってください。お答えします。\nコマンド:\n/start — あいさつ\n/help — このヘルプ\n/reset — 会話を最初からやり直す\n/persona 名前 — ペルソナを切り替える（{personas}）\n/lang コード — 回答の言語を指定（{languages}）。/lang auto で自動判定\n/export csv|json — 直前の回答の表をファイルで出力\n/human — 担当者と話す\n/bot — アシスタントに戻る",
    },
    "reset_done": {
        "en": "Done — I have started a fresh conversation. Earlier messages are no longer in my context.",
        "pt": "Pronto — comecei uma conversa nova. As mensagens anteriores já não estão no meu contexto.",
        "es": "Listo: he empezado una conversación nueva. Los mensajes anteriores ya no están en mi contexto.",
        "fr": "C'est fait — j'ai commencé une nouvelle conversation. Les messages précédents ne sont plus dans mon contexte.",
        "de": "Erledigt — ich habe ein neues Gespräch begonnen. Frühere Nachrichten sind nicht mehr in meinem Kontext.",
        "zh": "好的，我已开始新的对话。之前的消息不再在我的上下文中。",
        "ru": "Готово — я начал новый разговор. Прежние сообщения больше не в моём контексте.",
        "ja": "会話をリセットしました。以前のメッセージはもう参照しません。",
    },
    "persona_set": {
        "en": "Persona switched to “{persona}”.",
        "pt": "Persona trocada para “{persona}”.",
        "es": "Persona cambiada a «{persona}».",
        "fr": "Persona changée : « {persona} ».",
        "de": "Persona gewechselt zu „{persona}“.",
        "zh": "已切换到角色“{persona}”。",
        "ru": "Персона переключена на «{persona}».",
        "ja": "ペルソナを「{persona}」に切り替えました。",
    },
    "persona_unknown": {
        "en": "I don't know the persona “{name}”. Available: {personas}.",
        "pt": "Não conheço a persona “{name}”. Disponíveis: {personas}.",
        "es": "No conozco la persona «{name}». Disponibles: {personas}.",
        "fr": "Je ne connais pas la persona « {name} ». Disponibles : {personas}.",
        "de": "Die Persona „{name}“ kenne ich nicht. Verfügbar: {personas}.",
        "zh": "没有名为“{name}”的角色。可用角色：{personas}。",
        "ru": "Персона «{name}» мне неизвестна. Доступны: {personas}.",
        "ja": "ペルソナ「{name}」は見つかりません。利用可能: {personas}。",
    },
    "persona_list": {
        "en": "Current persona: “{persona}”. Available: {personas}. Use /persona NAME to switch.",
        "pt": "Persona atual: “{persona}”. Disponíveis: {personas}. Use /persona NOME para trocar.",
        "es": "Persona actual: «{persona}». Disponibles: {personas}. Usa /persona NOMBRE para cambiar.",
        "fr": "Persona actuelle : « {persona} ». Disponibles : {personas}. Utilisez /persona NOM pour changer.",
        "de": "Aktuelle Persona: „{persona}“. Verfügbar: {personas}. Mit /persona NAME wechseln.",
        "zh": "当前角色：“{persona}”。可用角色：{personas}。使用 /persona 名称 切换。",
        "ru": "Текущая персона: «{persona}». Доступны: {personas}. Сменить: /persona ИМЯ.",
        "ja": "現在のペルソナ:「{persona}」。利用可能: {personas}。/persona 名前 で切り替えます。",
    },
    "lang_set": {
        "en": "From now on I will answer in {language}.",
        "pt": "A partir de agora responderei em {language}.",
        "es": "A partir de ahora responderé en {language}.",
        "fr": "Désormais, je répondrai en {language}.",
        "de": "Ab jetzt antworte ich auf {language}.",
        "zh": "从现在起我将用{language}回答。",
        "ru": "Теперь я буду отвечать на языке: {language}.",
        "ja": "これからは{language}で回答します。",
    },
    "lang_auto": {
        "en": "I will answer in the language you write in.",
        "pt": "Vou responder no idioma em que você escrever.",
        "es": "Responderé en el idioma en que escribas.",
        "fr": "Je répondrai dans la langue dans laquelle vous écrivez.",
        "de": "Ich antworte in der Sprache, in der Sie schreiben.",
        "zh": "我将使用你所写的语言回答。",
        "ru": "Я буду отвечать на том языке, на котором вы пишете.",
        "ja": "あなたが書いた言語で回答します。",
    },
    "lang_unknown": {
        "en": "I can't answer in “{code}”. Choose one of: {languages}, or /lang auto.",
        "pt": "Não consigo responder em “{code}”. Escolha um de: {languages}, ou /lang auto.",
        "es": "No puedo responder en «{code}». Elige uno de: {languages}, o /lang auto.",
        "fr": "Je ne peux pas répondre en « {code} ». Choisissez parmi : {languages}, ou /lang auto.",
        "de": "In „{code}“ kann ich nicht antworten. Wählen Sie: {languages} oder /lang auto.",
        "zh": "无法使用“{code}”回答。请选择：{languages}，或 /lang auto。",
        "ru": "Я не могу отвечать на «{code}». Выберите: {languages} или /lang auto.",
        "ja": "「{code}」では回答できません。次から選んでください: {languages}、または /lang auto。",
    },
    "unknown_command": {
        "en": "I don't know the command {command}. Send /help to see what I can do.",
        "pt": "Não conheço o comando {command}. Envie /help para ver o que posso fazer.",
        "es": "No conozco el comando {command}. Envía /help para ver lo que puedo hacer.",
        "fr": "Je ne connais pas la commande {command}. Envoyez /help pour voir ce que je sais faire.",
        "de": "Den Befehl {command} kenne ich nicht. Senden Sie /help, um zu sehen, was ich kann.",
        "zh": "我不认识命令 {command}。发送 /help 查看可用功能。",
        "ru": "Я не знаю команду {command}. Отправьте /help, чтобы увидеть, что я умею.",
        "ja": "コマンド {command} はありません。/help で使い方を確認できます。",
    },
    "empty_message": {
        "en": "Your message was empty. Send me a question, a photo or a file.",
        "pt": "Sua mensagem estava vazia. Envie uma pergunta, uma foto ou um arquivo.",
        "es": "Tu mensaje estaba vacío. Envíame una pregunta, una foto o un archivo.",
        "fr": "Votre message était vide. Envoyez-moi une question, une photo ou un fichier.",
        "de": "Ihre Nachricht war leer. Schicken Sie mir eine Frage, ein Foto oder eine Datei.",
        "zh": "你的消息是空的。请发送问题、照片或文件。",
        "ru": "Ваше сообщение пустое. Пришлите вопрос, фото или файл.",
        "ja": "メッセージが空でした。質問、写真、ファイルを送ってください。",
    },
    "message_too_long": {
        "en": "Your message is too long for me ({chars} characters; the limit is {limit}). Please shorten it or send the text as a file.",
        "pt": "Sua mensagem é longa demais ({chars} caracteres; o limite é {limit}). Encurte-a ou envie o texto como arquivo.",
        "es": "Tu mensaje es demasiado largo ({chars} caracteres; el límite es {limit}). Acórtalo o envía el texto como archivo.",
        "fr": "Votre message est trop long ({chars} caractères ; la limite est {limit}). Raccourcissez-le ou envoyez le texte en fichier.",
        "de": "Ihre Nachricht ist zu lang ({chars} Zeichen; die Grenze liegt bei {limit}). Bitte kürzen Sie sie oder senden Sie den Text als Datei.",
        "zh": "你的消息太长了（{chars} 个字符，上限为 {limit}）。请缩短，或以文件形式发送。",
        "ru": "Сообщение слишком длинное ({chars} символов; предел — {limit}). Сократите его или пришлите текст файлом.",
        "ja": "メッセージが長すぎます（{chars} 文字、上限は {limit} 文字）。短くするか、ファイルとして送ってください。",
    },
    "prompt_too_long": {
        "en": "This message needs about {tokens} tokens, more than my context of {limit} holds. Please send less text or fewer images.",
        "pt": "Esta mensagem precisa de cerca de {tokens} tokens, mais do que cabe no meu contexto de {limit}. Envie menos texto ou menos imagens.",
        "es": "Este mensaje necesita unos {tokens} tokens, más de los que caben en mi contexto de {limit}. Envía menos texto o menos imágenes.",
        "fr": "Ce message demande environ {tokens} jetons, plus que mon contexte de {limit}. Envoyez moins de texte ou moins d'images.",
        "de": "Diese Nachricht braucht etwa {tokens} Tokens, mehr als mein Kontext von {limit} fasst. Bitte senden Sie weniger Text oder weniger Bilder.",
        "zh": "这条消息约需 {tokens} 个 token，超出了我的上下文上限 {limit}。请减少文字或图片。",
        "ru": "Этому сообщению нужно около {tokens} токенов — больше, чем вмещает мой контекст ({limit}). Пришлите меньше текста или изображений.",
        "ja": "このメッセージには約 {tokens} トークンが必要で、コンテキスト上限 {limit} を超えています。文章か画像を減らしてください。",
    },
    "unreadable_image": {
        "en": "I couldn't read the image “{name}”: it seems damaged or isn't really an image. Please send it again as a JPEG or PNG photo.",
        "pt": "Não consegui ler a imagem “{name}”: parece danificada ou não é uma imagem. Envie-a de novo como foto JPEG ou PNG.",
        "es": "No pude leer la imagen «{name}»: parece dañada o no es una imagen. Envíala de nuevo como foto JPEG o PNG.",
        "fr": "Je n'ai pas pu lire l'image « {name} » : elle semble abîmée ou n'est pas une image. Renvoyez-la en JPEG ou PNG.",
        "de": "Ich konnte das Bild „{name}“ nicht lesen: Es scheint beschädigt oder gar kein Bild zu sein. Bitte senden Sie es erneut als JPEG oder PNG.",
        "zh": "无法读取图片“{name}”：文件可能已损坏或不是图片。请以 JPEG 或 PNG 格式重新发送。",
        "ru": "Не удалось прочитать изображение «{name}»: похоже, файл повреждён или это не изображение. Пришлите его снова в формате JPEG или PNG.",
        "ja": "画像「{name}」を読み取れませんでした。破損しているか画像ではないようです。JPEG か PNG で送り直してください。",
    },
    "image_too_large": {
        "en": "The image “{name}” is too large ({pixels} megapixels; the limit is {limit}). Please send a smaller version.",
        "pt": "A imagem “{name}” é grande demais ({pixels} megapixels; o limite é {limit}). Envie uma versão menor.",
        "es": "La imagen «{name}» es demasiado grande ({pixels} megapíxeles; el límite es {limit}). Envía una versión más pequeña.",
        "fr": "L'image « {name} » est trop grande ({pixels} mégapixels ; la limite est {limit}). Envoyez une version plus petite.",
        "de": "Das Bild „{name}“ ist zu groß ({pixels} Megapixel; die Grenze liegt bei {limit}). Bitte senden Sie eine kleinere Version.",
        "zh": "图片“{name}”太大（{pixels} 百万像素，上限为 {limit}）。请发送较小的版本。",
        "ru": "Изображение «{name}» слишком большое ({pixels} Мпикс; предел — {limit}). Пришлите уменьшенную версию.",
        "ja": "画像「{name}」が大きすぎます（{pixels} メガピクセル、上限は {limit}）。小さい版を送ってください。",
    },
    "file_too_large": {
        "en": "The file “{name}” is too large ({size_mb} MB; the limit is {limit_mb} MB).",
        "pt": "O arquivo “{name}” é grande demais ({size_mb} MB; o limite é {limit_mb} MB).",
        "es": "El archivo «{name}» es demasiado grande ({size_mb} MB; el límite es {limit_mb} MB).",
        "fr": "Le fichier « {name} » est trop volumineux ({size_mb} Mo ; la limite est {limit_mb} Mo).",
        "de": "Die Datei „{name}“ ist zu groß ({size_mb} MB; die Grenze liegt bei {limit_mb} MB).",
        "zh": "文件“{name}”太大（{size_mb} MB，上限为 {limit_mb} MB）。",
        "ru": "Файл «{name}» слишком большой ({size_mb} МБ; предел — {limit_mb} МБ).",
        "ja": "ファイル「{name}」が大きすぎます（{size_mb} MB、上限は {limit_mb} MB）。",
    },
    "unsupported_file": {
        "en": "I can't read “{name}” ({kind}). I can read photos and images (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC), videos (MP4, MOV, WebM), PDF documents and plain-text files.",
        "pt": "Não consigo ler “{name}” ({kind}). Leio fotos e imagens (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC), vídeos (MP4, MOV, WebM), documentos PDF e arquivos de texto simples.",
        "es": "No puedo leer «{name}» ({kind}). Leo fotos e imágenes (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC), vídeos (MP4, MOV, WebM), documentos PDF y archivos de texto plano.",
        "fr": "Je ne peux pas lire « {name} » ({kind}). Je lis les photos et images (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC), les vidéos (MP4, MOV, WebM), les documents PDF et les fichiers texte.",
        "de": "„{name}“ ({kind}) kann ich nicht lesen. Ich lese Fotos und Bilder (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC), Videos (MP4, MOV, WebM), PDF-Dokumente und reine Textdateien.",
        "zh": "无法读取“{name}”（{kind}）。我能读取照片和图片（JPEG、PNG、WebP、GIF、BMP、TIFF、HEIC）、视频（MP4、MOV、WebM）、PDF 文档以及纯文本文件。",
        "ru": "Я не могу прочитать «{name}» ({kind}). Я читаю фото и изображения (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC), видео (MP4, MOV, WebM), PDF-документы и текстовые файлы.",
        "ja": "「{name}」（{kind}）は読み取れません。写真・画像（JPEG、PNG、WebP、GIF、BMP、TIFF、HEIC）、動画（MP4、MOV、WebM）、PDF 文書、テキストファイルに対応しています。",
    },
    "attachment_unavailable": {
        "en": "I couldn't download the file “{name}”. Please send it again.",
        "pt": "Não consegui baixar o arquivo “{name}”. Envie-o novamente.",
        "es": "No pude descargar el archivo «{name}». Envíalo de nuevo.",
        "fr": "Je n'ai pas pu télécharger le fichier « {name} ». Renvoyez-le, s'il vous plaît.",
        "de": "Ich konnte die Datei „{name}“ nicht herunterladen. Bitte senden Sie sie erneut.",
        "zh": "无法下载文件“{name}”。请重新发送。",
        "ru": "Не удалось скачать файл «{name}». Пришлите его ещё раз.",
        "ja": "ファイル「{name}」をダウンロードできませんでした。もう一度送ってください。",
    },
    "too_many_pending": {
        "en": "You have {count} messages waiting for an answer. Please wait for my replies before sending more.",
        "pt": "Você tem {count} mensagens aguardando resposta. Aguarde minhas respostas antes de enviar mais.",
        "es": "Tienes {count} mensajes esperando respuesta. Espera mis respuestas antes de enviar más.",
        "fr": "Vous avez {count} messages en attente de réponse. Attendez mes réponses avant d'en envoyer d'autres.",
        "de": "{count} Nachrichten warten noch auf Antwort. Bitte warten Sie meine Antworten ab, bevor Sie weitere senden.",
        "zh": "你有 {count} 条消息正在等待回复。请等我回复后再发送。",
        "ru": "У вас {count} сообщений ждут ответа. Пожалуйста, дождитесь ответов, прежде чем писать ещё.",
        "ja": "{count} 件のメッセージが回答待ちです。回答をお待ちいただいてから送ってください。",
    },
    "engine_error": {
        "en": "Sorry, something went wrong while I was answering. Please try again in a moment.",
        "pt": "Desculpe, algo deu errado enquanto eu respondia. Tente de novo daqui a pouco.",
        "es": "Lo siento, algo salió mal mientras respondía. Inténtalo de nuevo en un momento.",
        "fr": "Désolé, un problème est survenu pendant ma réponse. Réessayez dans un instant.",
        "de": "Entschuldigung, beim Antworten ist etwas schiefgegangen. Bitte versuchen Sie es gleich noch einmal.",
        "zh": "抱歉，回答时出了点问题。请稍后再试。",
        "ru": "Извините, при ответе что-то пошло не так. Попробуйте ещё раз чуть позже.",
        "ja": "申し訳ありません。回答中に問題が発生しました。少し待ってからもう一度お試しください。",
    },
    "engine_unavailable": {
        "en": "The model is busy or unavailable right now. Please try again in a few minutes.",
        "pt": "O modelo está ocupado ou indisponível agora. Tente de novo em alguns minutos.",
        "es": "El modelo está ocupado o no disponible ahora. Inténtalo de nuevo en unos minutos.",
        "fr": "Le modèle est occupé ou indisponible pour le moment. Réessayez dans quelques minutes.",
        "de": "Das Modell ist gerade ausgelastet oder nicht erreichbar. Bitte versuchen Sie es in ein paar Minuten erneut.",
        "zh": "模型当前繁忙或不可用。请几分钟后再试。",
        "ru": "Модель сейчас занята или недоступна. Попробуйте через несколько минут.",
        "ja": "モデルは現在混雑しているか利用できません。数分後にもう一度お試しください。",
    },
    "error_generic": {
        "en": "Sorry, I couldn't process that message.",
        "pt": "Desculpe, não consegui processar essa mensagem.",
        "es": "Lo siento, no pude procesar ese mensaje.",
        "fr": "Désolé, je n'ai pas pu traiter ce message.",
        "de": "Entschuldigung, diese Nachricht konnte ich nicht verarbeiten.",
        "zh": "抱歉，无法处理这条消息。",
        "ru": "Извините, не удалось обработать это сообщение.",
        "ja": "申し訳ありません。このメッセージを処理できませんでした。",
    },
    "history_images_dropped": {
        "en": "Note: to fit my context, I no longer see {count} earlier image(s) of this conversation. Send them again if they matter.",
        "pt": "Obs.: para caber no meu contexto, não vejo mais {count} imagem(ns) anterior(es) desta conversa. Reenvie-as se forem importantes.",
        "es": "Nota: para caber en mi contexto, ya no veo {count} imagen(es) anterior(es) de esta conversación. Reenvíalas si importan.",
        "fr": "Remarque : pour tenir dans mon contexte, je ne vois plus {count} image(s) précédente(s) de cette conversation. Renvoyez-les si elles comptent.",
        "de": "Hinweis: Damit alles in meinen Kontext passt, sehe ich {count} frühere(s) Bild(er) dieses Gesprächs nicht mehr. Senden Sie sie erneut, falls wichtig.",
        "zh": "提示：为适应上下文长度，我已看不到本对话中较早的 {count} 张图片。如有需要请重新发送。",
        "ru": "Примечание: чтобы уложиться в контекст, я больше не вижу {count} прежних изображений этого разговора. Пришлите их снова, если они важны.",
        "ja": "注意: コンテキストに収めるため、この会話の以前の画像 {count} 枚は参照できなくなりました。必要なら送り直してください。",
    },
    "empty_answer": {
        "en": "I don't have an answer to that. Could you rephrase the question or add a photo?",
        "pt": "Não tenho uma resposta para isso. Pode reformular a pergunta ou enviar uma foto?",
        "es": "No tengo una respuesta para eso. ¿Puedes reformular la pregunta o añadir una foto?",
        "fr": "Je n'ai pas de réponse à cela. Pouvez-vous reformuler la question ou ajouter une photo ?",
        "de": "Darauf habe ich keine Antwort. Können Sie die Frage anders formulieren oder ein Foto senden?",
        "zh": "我无法回答这个问题。能换个说法或附上一张照片吗？",
        "ru": "У меня нет ответа на это. Переформулируйте вопрос или приложите фото.",
        "ja": "その質問にはお答えできません。言い換えるか、写真を添えてください。",
    },
    "too_many_images": {
        "en": "I can look at up to {limit} images at once, so I used the first {limit} of the {count} you sent.",
        "pt": "Consigo ver até {limit} imagens de uma vez, então usei as primeiras {limit} das {count} que você enviou.",
        "es": "Puedo ver hasta {limit} imágenes a la vez, así que usé las primeras {limit} de las {count} que enviaste.",
        "fr": "Je peux regarder jusqu'à {limit} images à la fois : j'ai utilisé les {limit} premières des {count} envoyées.",
        "de": "Ich kann bis zu {limit} Bilder auf einmal ansehen und habe die ersten {limit} von {count} verwendet.",
        "zh": "我一次最多能看 {limit} 张图片，因此只使用了你发送的 {count} 张中的前 {limit} 张。",
        "ru": "Я могу смотреть не больше {limit} изображений за раз, поэтому взял первые {limit} из {count}.",
        "ja": "一度に見られる画像は {limit} 枚までなので、送られた {count} 枚のうち最初の {limit} 枚を使いました。",
    },
    "images_reduced": {
        "en": "Note: to fit everything into my context, I looked at {count} of your images in less detail.",
        "pt": "Obs.: para caber tudo no meu contexto, analisei {count} das suas imagens com menos detalhe.",
        "es": "Nota: para que todo quepa en mi contexto, miré {count} de tus imágenes con menos detalle.",
        "fr": "Remarque : pour tout faire tenir dans mon contexte, j'ai regardé {count} de vos images avec moins de détail.",
        "de": "Hinweis: Damit alles in meinen Kontext passt, habe ich {count} Ihrer Bilder mit weniger Details betrachtet.",
        "zh": "提示：为适应上下文长度，我以较低的细节查看了你的 {count} 张图片。",
        "ru": "Примечание: чтобы всё уместилось в контекст, я рассмотрел {count} ваших изображений с меньшей детализацией.",
        "ja": "注意: コンテキストに収めるため、画像 {count} 枚を低い解像度で確認しました。",
    },
    "reading_frames": {
        "en": "Reading the video: frame {done} of {total}…",
        "pt": "Lendo o vídeo: quadro {done} de {total}…",
        "es": "Leyendo el vídeo: fotograma {done} de {total}…",
        "fr": "Lecture de la vidéo : image {done} sur {total}…",
        "de": "Lese das Video: Bild {done} von {total}…",
        "zh": "正在读取视频：第 {done}/{total} 帧…",
        "ru": "Читаю видео: кадр {done} из {total}…",
        "ja": "動画を読み込み中: {total} フレーム中 {done}…",
    },
    "unreadable_video": {
        "en": "I couldn't read the video “{name}”: it seems damaged, empty or in a format I don't know. Please send it again as an MP4.",
        "pt": "Não consegui ler o vídeo “{name}”: parece danificado, vazio ou num formato que não conheço. Envie-o de novo em MP4.",
        "es": "No pude leer el vídeo «{name}»: parece dañado, vacío o en un formato que no conozco. Envíalo de nuevo en MP4.",
        "fr": "Je n'ai pas pu lire la vidéo « {name} » : elle semble abîmée, vide ou dans un format inconnu. Renvoyez-la en MP4.",
        "de": "Ich konnte das Video „{name}“ nicht lesen: Es scheint beschädigt, leer oder in einem unbekannten Format zu sein. Bitte senden Sie es als MP4.",
        "zh": "无法读取视频“{name}”：文件可能已损坏、为空或格式不受支持。请以 MP4 格式重新发送。",
        "ru": "Не удалось прочитать видео «{name}»: похоже, файл повреждён, пуст или в незнакомом формате. Пришлите его снова в MP4.",
        "ja": "動画「{name}」を読み取れませんでした。破損しているか、空か、未対応の形式のようです。MP4 で送り直してください。",
    },
    "video_too_long": {
        "en": "The video “{name}” is {minutes} minutes long; I can watch up to {limit} minutes. Please send a shorter clip.",
        "pt": "O vídeo “{name}” tem {minutes} minutos; consigo ver até {limit} minutos. Envie um trecho mais curto.",
        "es": "El vídeo «{name}» dura {minutes} minutos; puedo ver hasta {limit} minutos. Envía un fragmento más corto.",
        "fr": "La vidéo « {name} » dure {minutes} minutes ; je peux en regarder {limit} au maximum. Envoyez un extrait plus court.",
        "de": "Das Video „{name}“ ist {minutes} Minuten lang; ich kann bis zu {limit} Minuten ansehen. Bitte senden Sie einen kürzeren Ausschnitt.",
        "zh": "视频“{name}”时长 {minutes} 分钟，我最多能看 {limit} 分钟。请发送更短的片段。",
        "ru": "Видео «{name}» длится {minutes} мин; я могу смотреть до {limit} мин. Пришлите более короткий фрагмент.",
        "ja": "動画「{name}」は {minutes} 分あります。見られるのは {limit} 分までです。短いクリップを送ってください。",
    },
    "video_too_large": {
        "en": "The video “{name}” is {width}x{height}, larger than I can read. Please send it in 4K or lower.",
        "pt": "O vídeo “{name}” tem {width}x{height}, maior do que consigo ler. Envie-o em 4K ou menos.",
        "es": "El vídeo «{name}» es de {width}x{height}, más grande de lo que puedo leer. Envíalo en 4K o menos.",
        "fr": "La vidéo « {name} » fait {width}x{height}, trop grand pour moi. Envoyez-la en 4K ou moins.",
        "de": "Das Video „{name}“ hat {width}x{height}, mehr als ich lesen kann. Bitte senden Sie es in 4K oder kleiner.",
        "zh": "视频“{name}”分辨率为 {width}x{height}，超出我能读取的范围。请以 4K 或更低分辨率发送。",
        "ru": "Видео «{name}» имеет размер {width}x{height} — больше, чем я могу прочитать. Пришлите его в 4K или меньше.",
        "ja": "動画「{name}」は {width}x{height} で大きすぎます。4K 以下で送ってください。",
    },
    "document_truncated": {
        "en": "“{name}” has {total} pages; I read the first {pages}. Send the pages you need as a separate PDF if the answer is elsewhere.",
        "pt": "“{name}” tem {total} páginas; li as primeiras {pages}. Envie as páginas necessárias num PDF separado se a resposta estiver em outro lugar.",
        "es": "«{name}» tiene {total} páginas; leí las primeras {pages}. Envía las páginas que necesites en un PDF aparte si la respuesta está en otra parte.",
        "fr": "« {name} » compte {total} pages ; j'ai lu les {pages} premières. Envoyez les pages utiles dans un PDF séparé si la réponse est ailleurs.",
        "de": "„{name}“ hat {total} Seiten; ich habe die ersten {pages} gelesen. Schicken Sie die nötigen Seiten als eigenes PDF, falls die Antwort woanders steht.",
        "zh": "“{name}”共 {total} 页，我读取了前 {pages} 页。如果答案在其他页，请将所需页面另存为 PDF 发送。",
        "ru": "В «{name}» {total} страниц; я прочитал первые {pages}. Если ответ в другом месте, пришлите нужные страницы отдельным PDF.",
        "ja": "「{name}」は {total} ページあります。最初の {pages} ページを読みました。必要なページは別の PDF で送ってください。",
    },
    "unreadable_document": {
        "en": "I couldn't open the document “{name}”: it seems damaged or isn't really a PDF. Please export it to PDF again and resend it.",
        "pt": "Não consegui abrir o documento “{name}”: parece danificado ou não é um PDF. Exporte-o de novo para PDF e reenvie.",
        "es": "No pude abrir el documento «{name}»: parece dañado o no es un PDF. Vuelve a exportarlo a PDF y reenvíalo.",
        "fr": "Je n'ai pas pu ouvrir le document « {name} » : il semble abîmé ou n'est pas un PDF. Réexportez-le en PDF et renvoyez-le.",
        "de": "Ich konnte das Dokument „{name}“ nicht öffnen: Es scheint beschädigt oder kein PDF zu sein. Bitte exportieren Sie es erneut als PDF.",
        "zh": "无法打开文档“{name}”：文件可能已损坏或不是 PDF。请重新导出为 PDF 后发送。",
        "ru": "Не удалось открыть документ «{name}»: похоже, он повреждён или это не PDF. Экспортируйте его в PDF заново и пришлите.",
        "ja": "文書「{name}」を開けませんでした。破損しているか PDF ではないようです。PDF に再出力して送ってください。",
    },
    "encrypted_document": {
        "en": "The document “{name}” is protected by a password, so I can't read it. Please send a copy without a password.",
        "pt": "O documento “{name}” está protegido por senha, então não consigo lê-lo. Envie uma cópia sem senha.",
        "es": "El documento «{name}» está protegido con contraseña y no puedo leerlo. Envía una copia sin contraseña.",
        "fr": "Le document « {name} » est protégé par un mot de passe : je ne peux pas le lire. Envoyez une copie sans mot de passe.",
        "de": "Das Dokument „{name}“ ist passwortgeschützt, daher kann ich es nicht lesen. Bitte senden Sie eine Kopie ohne Passwort.",
        "zh": "文档“{name}”受密码保护，我无法读取。请发送无密码的副本。",
        "ru": "Документ «{name}» защищён паролем, и я не могу его прочитать. Пришлите копию без пароля.",
        "ja": "文書「{name}」はパスワードで保護されているため読めません。パスワードなしのコピーを送ってください。",
    },
    "export_usage": {
        "en": "Use /export csv or /export json to get the tables of my last answer as a file.",
        "pt": "Use /export csv ou /export json para receber as tabelas da minha última resposta como arquivo.",
        "es": "Usa /export csv o /export json para recibir las tablas de mi última respuesta como archivo.",
        "fr": "Utilisez /export csv ou /export json pour recevoir les tableaux de ma dernière réponse en fichier.",
        "de": "Mit /export csv oder /export json erhalten Sie die Tabellen meiner letzten Antwort als Datei.",
        "zh": "使用 /export csv 或 /export json 将我上一条回答中的表格导出为文件。",
        "ru": "Отправьте /export csv или /export json, чтобы получить таблицы моего последнего ответа файлом.",
        "ja": "/export csv または /export json で、直前の回答の表をファイルで受け取れます。",
    },
    "export_nothing": {
        "en": "There is no table in my last answer to export.",
        "pt": "Não há nenhuma tabela na minha última resposta para exportar.",
        "es": "No hay ninguna tabla en mi última respuesta para exportar.",
        "fr": "Il n'y a aucun tableau à exporter dans ma dernière réponse.",
        "de": "Meine letzte Antwort enthält keine Tabelle zum Exportieren.",
        "zh": "我上一条回答中没有可导出的表格。",
        "ru": "В моём последнем ответе нет таблиц для экспорта.",
        "ja": "直前の回答にはエクスポートできる表がありません。",
    },
    "export_done": {
        "en": "Here are {count} table(s) as {filename}.",
        "pt": "Aqui estão {count} tabela(s) em {filename}.",
        "es": "Aquí tienes {count} tabla(s) en {filename}.",
        "fr": "Voici {count} tableau(x) dans {filename}.",
        "de": "Hier sind {count} Tabelle(n) als {filename}.",
        "zh": "已将 {count} 个表格导出为 {filename}。",
        "ru": "Вот {count} табл. в файле {filename}.",
        "ja": "{count} 個の表を {filename} にまとめました。",
    },
    "greeting_hint": {
        "en": "Send /help to see the commands.",
        "pt": "Envie /help para ver os comandos.",
        "es": "Envía /help para ver los comandos.",
        "fr": "Envoyez /help pour voir les commandes.",
        "de": "Senden Sie /help, um die Befehle zu sehen.",
        "zh": "发送 /help 查看命令。",
        "ru": "Отправьте /help, чтобы увидеть команды.",
        "ja": "/help でコマンド一覧を表示します。",
    },
    "handoff_started": {
        "en": "I have asked a person to take over this conversation. Someone will answer here as soon as possible; your messages until then are passed on. Send /bot to talk to the assistant again.",
        "pt": "Pedi a uma pessoa que assuma esta conversa. Alguém vai responder aqui assim que possível; suas mensagens até lá serão repassadas. Envie /bot para voltar a falar com o assistente.",
        "es": "He pedido a una persona que continúe esta conversación. Alguien responderá aquí lo antes posible; tus mensajes hasta entonces se le pasarán. Envía /bot para volver a hablar con el asistente.",
        "fr": "J'ai demandé à une personne de reprendre cette conversation. Quelqu'un vous répondra ici dès que possible ; vos messages d'ici là lui seront transmis. Envoyez /bot pour revenir à l'assistant.",
        "de": "Ich habe einen Menschen gebeten, dieses Gespräch zu übernehmen. Jemand antwortet hier so bald wie möglich; Ihre Nachrichten bis dahin werden weitergegeben. Senden Sie /bot, um wieder mit dem Assistenten zu sprechen.",
        "zh": "我已请人工客服接手这段对话，会尽快在这里回复您；在此之前您发送的消息都会转交给他们。发送 /bot 可回到智能助手。",
        "ru": "Я попросил человека подключиться к разговору. Вам ответят здесь как можно скорее; ваши сообщения до этого будут переданы. Отправьте /bot, чтобы снова говорить с ассистентом.",
        "ja": "担当者に引き継ぎを依頼しました。できるだけ早くここで返信します。それまでのメッセージも担当者に伝わります。/bot でアシスタントに戻ります。",
    },
    "handoff_already": {
        "en": "You are already waiting for a person; they will answer here. Send /bot to talk to the assistant again.",
        "pt": "Você já está aguardando uma pessoa; ela vai responder aqui. Envie /bot para voltar ao assistente.",
        "es": "Ya estás esperando a una persona; te responderá aquí. Envía /bot para volver al asistente.",
        "fr": "Vous attendez déjà une personne ; elle vous répondra ici. Envoyez /bot pour revenir à l'assistant.",
        "de": "Sie warten bereits auf einen Menschen; er antwortet hier. Senden Sie /bot, um zum Assistenten zurückzukehren.",
        "zh": "您已在等待人工客服，他们会在这里回复。发送 /bot 可回到智能助手。",
        "ru": "Вы уже ждёте человека; вам ответят здесь. Отправьте /bot, чтобы вернуться к ассистенту.",
        "ja": "すでに担当者をお待ちいただいています。ここで返信があります。/bot でアシスタントに戻ります。",
    },
    "handoff_ended": {
        "en": "You are talking to the assistant again. Ask me anything.",
        "pt": "Você está falando com o assistente de novo. Pergunte o que quiser.",
        "es": "Vuelves a hablar con el asistente. Pregúntame lo que quieras.",
        "fr": "Vous parlez de nouveau à l'assistant. Posez-moi vos questions.",
        "de": "Sie sprechen wieder mit dem Assistenten. Fragen Sie mich gern.",
        "zh": "您已回到智能助手，请随时提问。",
        "ru": "Вы снова говорите с ассистентом. Спрашивайте.",
        "ja": "アシスタントに戻りました。何でも聞いてください。",
    },
    "handoff_not_active": {
        "en": "You are talking to the assistant already.",
        "pt": "Você já está falando com o assistente.",
        "es": "Ya estás hablando con el asistente.",
        "fr": "Vous parlez déjà à l'assistant.",
        "de": "Sie sprechen bereits mit dem Assistenten.",
        "zh": "您当前就在与智能助手对话。",
        "ru": "Вы и так говорите с ассистентом.",
        "ja": "すでにアシスタントと話しています。",
    },
    "busy_restarting": {
        "en": "The assistant is restarting. Please send your message again in a moment.",
        "pt": "O assistente está reiniciando. Envie sua mensagem de novo daqui a pouco.",
        "es": "El asistente se está reiniciando. Vuelve a enviar tu mensaje en un momento.",
        "fr": "L'assistant redémarre. Renvoyez votre message dans un instant.",
        "de": "Der Assistent startet neu. Bitte senden Sie Ihre Nachricht gleich noch einmal.",
        "zh": "助手正在重启，请稍后重新发送消息。",
        "ru": "Ассистент перезапускается. Отправьте сообщение ещё раз через минуту.",
        "ja": "アシスタントを再起動しています。少ししてからもう一度送ってください。",
    },
    "cancelled": {
        "en": "(stopped)",
        "pt": "(interrompido)",
        "es": "(detenido)",
        "fr": "(interrompu)",
        "de": "(abgebrochen)",
        "zh": "（已停止）",
        "ru": "(остановлено)",
        "ja": "（停止しました）",
    },
}

#: Plain-language requests for a person, per language. A request is a short message that matches one
#: of these; "is this human hair?" is not one.
_HUMAN_REQUESTS: dict[str, str] = {
    "en": r"\b(talk|speak|chat)\s+(to|with)\s+(a|an|some|the|your)?\s*(real\s+|live\s+)?(human|person|people|agent|someone|somebody|operator|representative|staff|employee)\b"
          r"|\b(human|live|real)\s+(agent|person|support|operator)\b|\b(connect|transfer)\s+me\s+to\b"
          r"|^\s*(a\s+)?(human|agent|operator|representative)(\s+please)?[\s!.]*$",
    "pt": r"\bfalar\s+com\s+(um|uma|alguém|algum|o|a)?\s*(humano|pessoa|atendente|agente|operador|funcionári[oa]|alguém)\b"
          r"|\batendente\s+humano\b|\batendimento\s+humano\b",
    "es": r"\bhablar\s+con\s+(un|una|alguien|algún|el|la)?\s*(humano|persona|agente|operador|asesor|alguien)\b"
          r"|\bagente\s+humano\b|\batención\s+humana\b",
    "fr": r"\bparler\s+(à|a|avec)\s+(un|une|quelqu'un|quelqu’un)\s*(de\s+réel|de\s+vrai)?\s*(humain|personne|conseiller|conseillère|agent|opérateur|opératrice)?(\b|$)"
          r"|\bvrai\s+humain\b|\bconseiller\s+humain\b",
    "de": r"\b(mit|zu)\s+(einem|einer|jemandem)\s+(echten\s+)?(menschen|mensch|person|mitarbeiter|mitarbeiterin|berater|beraterin)?\s*(sprechen|reden)\b"
          r"|\bmit\s+jemandem\s+(sprechen|reden)\b|\becht(en|er)\s+mensch",
    "zh": r"人工(客服|服务|坐席)|转人工|真人(客服)?|找人工|^\s*人工\s*$",
    "ru": r"(поговорить|связаться|соедините|переключите).{0,12}(с\s+)?(человеком|оператором|сотрудником|менеджером|живым)",
    "ja": r"(人間|担当者|オペレーター|スタッフ|有人).{0,6}(と話|につな|に代わ|に繋|対応)",
}
_HUMAN_RE = re.compile("|".join(f"(?:{p})" for p in _HUMAN_REQUESTS.values()), re.I)


def asks_for_human(text: str) -> bool:
    """True when ``text`` is a plain request to talk to a person, in any supported language."""
    text = text.strip()
    if not text or len(text) > 200:
        return False
    return bool(_HUMAN_RE.search(text))


#: Spoken instruction placed in the system prompt so the model answers in the right language.
ANSWER_IN = "Always answer in {name} ({native}), the user's language, unless the user explicitly asks for another language."


def normalize_code(code: str | None) -> str | None:
    """``pt-BR`` / ``pt_br`` / ``PT`` -> ``pt``; returns None for empty input."""
    if not code:
        return None
    base = re.split(r"[-_]", code.strip())[0].lower()
    return base or None


def language_name(code: str) -> str:
    name, native = LANGUAGE_NAMES.get(code, (code, code))
    return native if native == name else f"{native} ({name})"


def text(key: str, lang: str, **params: Any) -> str:
    """The framework text ``key`` in ``lang`` (English when not translated)."""
    table = TEXTS[key]
    template = table.get(lang) or table["en"]
    try:
        return template.format(**params)
    except (KeyError, IndexError):
        log.error("text %s/%s is missing a parameter; given %s", key, lang, sorted(params))
        return table["en"].format_map(_Blank(params))


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


_URL = re.compile(r"https?://\S+|<[^>]+>|@\w+|/\w+|`[^`]*`")


@lru_cache(maxsize=8)
def _lingua_detector(codes: tuple[str, ...]) -> Any:
    """One lingua detector per language set, shared: building one takes about a second and ~300 MB
    for a dozen languages, and a built detector is immutable and safe to share between threads."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    wanted = []
    for code in codes:
        iso = getattr(IsoCode639_1, code.upper(), None)
        if iso is None:
            raise ValueError(f"unknown language code {code!r}")
        wanted.append(Language.from_iso_code_639_1(iso))
    if not wanted:
        raise ValueError("at least one language is needed for detection")
    if len(wanted) == 1:  # lingua needs two candidates
        wanted.append(Language.SPANISH if wanted[0] == Language.ENGLISH else Language.ENGLISH)
    # Preloaded models: lazily loaded ones make every call about ten times slower.
    return LanguageDetectorBuilder.from_languages(*wanted).with_preloaded_language_models().build()


class LanguageDetector:
    """Detects the language of a text among a configured set, with lingua (about 0.1 ms a message)."""

    #: Characters looked at; more adds time, not accuracy.
    SAMPLE = 1000

    def __init__(self, languages: Iterable[str]) -> None:
        self.codes: list[str] = list(languages)
        self._detector = _lingua_detector(tuple(self.codes))

    def detect(self, text: str) -> tuple[str | None, float]:
        """Return (code, confidence); code is None when the text has no letters."""
        cleaned = _URL.sub(" ", text[: self.SAMPLE * 2])[: self.SAMPLE]
        if not any(ch.isalpha() for ch in cleaned):
            return None, 0.0
        values = self._detector.compute_language_confidence_values(cleaned)
        if not values:
            return None, 0.0
        best = values[0]
        code = best.language.iso_code_639_1.name.lower()
        if code not in self.codes:
            return None, 0.0
        return code, float(best.value)


def letters(text: str) -> int:
    return sum(1 for ch in _URL.sub(" ", text) if ch.isalpha())


def choose_language(
    detector: LanguageDetector,
    text: str,
    *,
    pinned: str | None,
    locale_hint: str | None,
    previous: str | None,
    default: str,
    short_text_chars: int,
) -> str:
    """Pick the answer language for one message. See the module docstring for the order."""
    if pinned:
        return pinned
    code, confidence = detector.detect(text)
    if code and letters(text) >= short_text_chars and confidence >= 0.5:
        return code
    if code and confidence >= 0.9 and code in ("zh", "ja", "ko", "ru", "uk", "ar", "hi"):
        return code
    hint = normalize_code(locale_hint)
    if hint and hint in detector.codes:
        return hint
    if previous:
        return previous
    if code and confidence >= 0.6:
        return code
    return default
